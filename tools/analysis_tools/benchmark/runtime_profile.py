"""Where the time of one ``EmbedMaskONNXModel`` call goes, stage by stage:
the test pipeline (resize, pack), the data preprocessor (normalise, pad),
the graph (network, candidates, NMS: the backend's run), and the masks
(the compact contract's ``predict_by_feat`` at the original size, or the
dense contract's NumPy step). Each stage is timed as the call runs it, the
median over ``reps`` calls after ``warmup``.

    python tools/analysis_tools/benchmark/runtime_profile.py MODEL.onnx
        [MODEL2.onnx ...] [--backend openvino] [--size 320 320] [--reps 20]

``make bench`` prints it for the Lite model (speed settings: 100
detections) with both mask contracts.
"""
import argparse
import statistics
import time

import numpy as np
import torch

STAGES = ('pipeline', 'preprocess', 'graph', 'masks')


def stage_times(model, img: np.ndarray, warmup: int = 3,
                reps: int = 20) -> dict:
    """Median seconds per stage of ``model(img)`` (an
    ``EmbedMaskONNXModel``), and of the whole call."""
    from embedmask_mmdet.deploy.postprocess import postprocess
    times = {k: [] for k in STAGES + ('total',)}
    for rep in range(warmup + reps):
        marks = [time.perf_counter()]
        data = model.prepare(img)
        marks.append(time.perf_counter())
        with torch.no_grad():
            data = model.data_preprocessor(data, False)
        sample = data['data_samples'][0]
        marks.append(time.perf_counter())
        outputs = model.run_graph(data['inputs'][:1].numpy(),
                                  sample.img_shape)
        marks.append(time.perf_counter())
        if model.mask_contract == 'compact':
            model.compact_masks(outputs, sample)
        else:
            postprocess(*outputs, sample.img_shape, sample.ori_shape,
                        **model.mask_cfg)
        marks.append(time.perf_counter())
        if rep >= warmup:
            for key, start, stop in zip(STAGES, marks, marks[1:]):
                times[key].append(stop - start)
            times['total'].append(marks[-1] - marks[0])
    return {k: statistics.median(v) for k, v in times.items()}


def profile(model_files, backend: str, img: np.ndarray, config=None,
            warmup: int = 3, reps: int = 20, log=print) -> dict:
    """``stage_times`` of each exported model; rows keyed by file name."""
    import os.path as osp
    from embedmask_mmdet.deploy import EmbedMaskONNXModel
    rows = {}
    for model_file in model_files:
        model = EmbedMaskONNXModel(model_file, backend, config=config)
        row = stage_times(model, img, warmup, reps)
        row['contract'] = model.mask_contract
        rows[osp.basename(model_file)] = row
        log(f'{osp.basename(model_file)} ({backend}, {model.mask_contract} '
            'masks): ' + ', '.join(f'{k} {row[k] * 1e3:.1f} ms'
                                   for k in STAGES + ('total',)))
        del model
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('models', nargs='+', help='exported .onnx files')
    parser.add_argument('--backend', default='openvino',
                        choices=['onnxruntime', 'openvino'])
    parser.add_argument('--size', type=int, nargs=2, default=(320, 320),
                        metavar=('H', 'W'))
    parser.add_argument('--reps', type=int, default=20)
    args = parser.parse_args(argv)
    from deploy import test_image  # this folder's deploy section
    profile(args.models, args.backend, test_image(tuple(args.size)),
            reps=args.reps)


if __name__ == '__main__':
    main()
