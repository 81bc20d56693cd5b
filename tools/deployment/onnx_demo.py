"""Run an exported EmbedMask (.onnx) on images, a video, a camera or a stream
and draw the results with mmdet's DetLocalVisualizer, as tools/demo.py does
for PyTorch.

    python tools/deployment/onnx_demo.py IMAGE_OR_DIR MODEL.onnx --out-dir DIR
        [--backend onnxruntime|openvino] [--precision fp32|bf16]
        [--score-thr 0.3] [--limit N] [--json none|rle|polygon] [--show]
    python tools/deployment/onnx_demo.py VIDEO|CAMERA_INDEX|URL MODEL.onnx
        [--out-video OUT.mp4] [--show] [--max-frames N]
        [--json none|rle|polygon --out-dir DIR] [...]

The options and outputs are tools/demo.py's (the same helpers and the same
frame loop, embedmask_mmdet.apis.run_video): DIR/<image>.png, with --json
DIR/<image>.json; for a video --out-video, --show and one JSON line per
frame. An unreadable image is skipped with a warning naming it; the run goes
on, ends with the count of skipped images and exits 1 if any was skipped.
"""
import argparse
import os
import os.path as osp
import sys

import mmcv
from mmdet.registry import VISUALIZERS
from mmdet.utils import register_all_modules

from embedmask_mmdet.deploy import EmbedMaskONNXModel
from embedmask_mmdet.utils import list_images

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
from demo import (add_output_args, check_output_args,  # noqa: E402
                  run_video_source, write_image_outputs)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'inputs', help='an image file, a folder of images, a video file, a '
        'camera index (0) or a stream URL (rtsp://, http://)')
    parser.add_argument('model', help='the exported .onnx')
    add_output_args(parser)
    parser.add_argument('--backend', default='onnxruntime',
                        choices=['onnxruntime', 'openvino'])
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    return parser.parse_args(argv)


def frame_predictor(model: EmbedMaskONNXModel):
    """A BGR frame -> its data sample: the model's ``prepare`` and
    ``predict_batch``, as ``model(frame)`` runs them, without its
    per-call log line."""
    def predict(frame):
        return model.predict_batch(model.prepare(frame))[0]
    return predict


def drawing_meta(model: EmbedMaskONNXModel) -> dict:
    """The model's dataset_meta, with the config's palette when its classes
    are the model's: the colours tools/demo.py draws the PyTorch model in
    (the checkpoint carries the palette; the .onnx only the class names)."""
    meta = dict(model.dataset_meta)
    cfg_meta = model.cfg.get('metainfo') or {}
    same_classes = tuple(cfg_meta.get('classes', ())) == \
        tuple(meta.get('classes', ()))
    if 'palette' not in meta and cfg_meta.get('palette') and same_classes:
        meta['palette'] = cfg_meta['palette']
    return meta


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.model):
        sys.exit(f'error: model file {args.model!r} not found')
    video = check_output_args(args)
    if not video:
        try:
            images = list_images(args.inputs, args.limit)
        except ValueError as e:
            sys.exit(f'error: {e}')
    register_all_modules()
    model = EmbedMaskONNXModel(args.model, args.backend,
                               precision=args.precision)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = drawing_meta(model)
    classes = model.dataset_meta.get('classes')
    if video:
        run_video_source(args, frame_predictor(model), visualizer, classes)
        return

    os.makedirs(args.out_dir, exist_ok=True)
    results = model(images)
    for result in results:
        write_image_outputs(args, visualizer, result.img_path,
                            mmcv.imread(result.img_path, channel_order='rgb'),
                            result, classes)
    skipped = [p for p, _ in model.skipped]
    print(f'{len(results)} images processed, {len(skipped)} skipped'
          + (': ' + ', '.join(skipped) if skipped else ''))
    if skipped:
        sys.exit(1)


if __name__ == '__main__':
    main()
