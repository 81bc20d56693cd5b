"""One large photo through each inference path, each in its own process:
peak resident memory and time per image of ``EmbedMaskInferencer``
(PyTorch) and ``EmbedMaskONNXModel`` (ONNX Runtime, OpenVINO) on the
exported graph with the compact and the dense mask outputs; and the bytes
each contract's graph outputs at 800x1333 for 100 detections.

    python tools/analysis_tools/benchmark/large_image.py CONFIG CHECKPOINT
        --image IMG [--size 3000 4000] [--work-dir DIR] [--out JSON]

``make bench`` runs it in its deployment section on a val image of the
built-in set resized to 4000x3000 (the demo checkpoint).
"""
import argparse
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List

import numpy as np

HERE = osp.dirname(osp.abspath(__file__))
if __package__ in (None, ''):  # run as a script (the measured children are)
    sys.path.insert(0, osp.dirname(osp.dirname(HERE)))
from analysis_tools.benchmark.machine import peak_rss_mb  # noqa: E402
# the output size of the large-image case, (height, width)
LARGE = (3000, 4000)
# the graph output comparison: an 800x1333 image padded to 1344, 100 dets
OUTPUT_BYTES_SIZE, OUTPUT_BYTES_DETS = (800, 1344), 100
PATHS = ('pytorch', 'onnxruntime-compact', 'openvino-compact',
         'onnxruntime-dense')
# rounds of all paths, and timed calls per process (after one untimed)
ROUNDS, REPS = 3, 3


def _child(path: str, config: str, model_file: str, image: str,
           reps: int) -> dict:
    """Loads one path, runs it on ``image`` once to warm up and ``reps``
    times timed; the median time, the detections, the peak RSS."""
    import cv2
    img = cv2.imread(image)
    if path == 'pytorch':
        from embedmask_mmdet.apis import EmbedMaskInferencer
        inferencer = EmbedMaskInferencer(model=config, weights=model_file,
                                         device='cpu', show_progress=False)

        def run():
            return inferencer(img, return_datasamples=True, no_save_vis=True,
                              return_vis=False)['predictions'][0]
    else:
        from embedmask_mmdet.deploy import EmbedMaskONNXModel
        model = EmbedMaskONNXModel(model_file, path.split('-')[0])

        def run():
            return model(img)[0]
    loaded = peak_rss_mb()
    result = run()
    times = []
    for _ in range(reps):
        # a user's loop holds one image's results at a time
        result = None
        start = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - start)
    masks = result.pred_instances.masks
    return dict(seconds=float(np.median(times)), times=times,
                peak_rss_mb=peak_rss_mb(), rss_after_load_mb=loaded,
                detections=len(result.pred_instances),
                mask_shape=list(masks.shape), mask_pixels=int(masks.sum()))


def measure_path(path: str, config: str, model_file: str, image: str,
                 reps: int = REPS) -> dict:
    """``_child`` in a fresh process (peak RSS is per process)."""
    out = subprocess.run(
        [sys.executable, osp.abspath(__file__), '--child', path, config,
         model_file, image, str(reps)], capture_output=True, text=True,
        env=dict(os.environ, PYTHONWARNINGS='ignore'))
    if out.returncode:
        raise RuntimeError(f'{path} failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def output_bytes(model_file: str, dets: int = OUTPUT_BYTES_DETS,
                 size=OUTPUT_BYTES_SIZE) -> dict:
    """Bytes of each graph output for ``dets`` detections on a ``size``
    input: the graph is run by ONNX Runtime on a random input and its
    per-detection outputs (first dimension N) are scaled to ``dets``."""
    import onnxruntime as ort
    session = ort.InferenceSession(model_file,
                                   providers=['CPUExecutionProvider'])
    rng = np.random.default_rng(0)
    feed = dict(image=rng.standard_normal((1, 3, *size), np.float32),
                img_shape=np.array(size, np.int64))
    names = [o.name for o in session.get_outputs()]
    outs = session.run(names, {i.name: feed[i.name]
                               for i in session.get_inputs()})
    num = len(outs[0])
    per_output = {}
    for name, out in zip(names, outs):
        if out.ndim and out.shape[0] == num and name != 'pixel_embeds':
            row = out.dtype.itemsize * int(np.prod(out.shape[1:]))
            per_output[name] = dict(shape=['N'] + list(out.shape[1:]),
                                    bytes=row * dets)
        else:
            per_output[name] = dict(shape=list(out.shape), bytes=out.nbytes)
    return dict(size=list(size), detections=dets, outputs=per_output,
                total_bytes=sum(v['bytes'] for v in per_output.values()))


def large_test_image(src: str, out: str, size=LARGE) -> str:
    """``src`` resized (bilinear) to ``size`` (height, width), written to
    ``out`` as PNG."""
    import cv2
    img = cv2.imread(src)
    if img is None:
        raise FileNotFoundError(f'{src}: not a readable image')
    cv2.imwrite(out, cv2.resize(img, (size[1], size[0]),
                                interpolation=cv2.INTER_LINEAR))
    return out


def combine_rounds(runs: List[dict]) -> dict:
    """One path's rounds (``_child`` results) -> the median of all timed
    calls, the median of the rounds' peak RSS (each round a process), and
    the per-round figures."""
    row = dict(runs[-1])
    row.pop('times')
    row.update(
        seconds=float(np.median([t for r in runs for t in r['times']])),
        peak_rss_mb=float(np.median([r['peak_rss_mb'] for r in runs])),
        rss_after_load_mb=float(np.median([r['rss_after_load_mb']
                                           for r in runs])),
        rounds=[dict(seconds=r['seconds'], peak_rss_mb=r['peak_rss_mb'])
                for r in runs])
    return row


def run(config: str, checkpoint: str, image: str, work_dir: str,
        size=LARGE, log=print, rounds: int = ROUNDS) -> dict:
    """Exports both contracts, measures every path of ``PATHS`` on
    ``image`` resized to ``size`` (``rounds`` rounds, each running every
    path in turn in a fresh process: drifts of a shared machine reach
    every path alike) and each contract's output bytes."""
    from embedmask_mmdet.deploy import export_onnx
    os.makedirs(work_dir, exist_ok=True)
    big = large_test_image(image, osp.join(work_dir, 'large.png'), size)
    files = {}
    for masks in ('compact', 'dense'):
        files[masks] = osp.join(work_dir, f'large_{masks}.onnx')
        if not osp.isfile(files[masks]):
            export_onnx(config, checkpoint, files[masks], masks=masks)
    runs = {path: [] for path in PATHS}
    for round_ in range(rounds):
        for path in PATHS:
            model_file = checkpoint if path == 'pytorch' else \
                files[path.split('-')[1]]
            runs[path].append(measure_path(path, config, model_file, big))
            last = runs[path][-1]
            log(f'large image {size[1]}x{size[0]}, round {round_ + 1}/'
                f'{rounds}: {path}: {last["seconds"]:.2f} s, peak RSS '
                f'{last["peak_rss_mb"]:.0f} MB, {last["detections"]} '
                'detections')
    rows = {path: combine_rounds(r) for path, r in runs.items()}
    contracts = {masks: output_bytes(f) for masks, f in files.items()}
    for masks, info in contracts.items():
        log(f'graph outputs ({masks}) at {OUTPUT_BYTES_SIZE[0]}x'
            f'{OUTPUT_BYTES_SIZE[1]}, {OUTPUT_BYTES_DETS} dets: '
            f'{info["total_bytes"] / 2**20:.1f} MiB')
    return dict(size=list(size), image=osp.basename(image), rows=rows,
                rounds=rounds, reps=REPS, output_bytes=contracts)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == '--child':
        path, config, model_file, image, reps = argv[1:]
        print(json.dumps(_child(path, config, model_file, image, int(reps))))
        return
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--image', required=True,
                        help='an image, resized to --size')
    parser.add_argument('--size', type=int, nargs=2, default=LARGE,
                        metavar=('H', 'W'))
    parser.add_argument('--work-dir', default='work_dirs/large_image')
    parser.add_argument('--rounds', type=int, default=ROUNDS,
                        help='rounds of all paths, each path a fresh '
                        'process per round')
    parser.add_argument('--out', help='write the results as JSON here')
    args = parser.parse_args(argv)
    result = run(args.config, args.checkpoint, args.image, args.work_dir,
                 tuple(args.size), rounds=args.rounds)
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
