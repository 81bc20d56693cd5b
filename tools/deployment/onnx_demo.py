"""Run an exported EmbedMask (.onnx) on an image or a folder and draw the
results with mmdet's DetLocalVisualizer, as tools/demo.py does for PyTorch.

    python tools/deployment/onnx_demo.py IMAGE_OR_DIR MODEL.onnx --out-dir DIR
        [--backend onnxruntime|openvino] [--precision fp32|bf16]
        [--score-thr 0.3] [--limit N]

An unreadable image is skipped with a warning naming it; the run goes on,
ends with the count of skipped images and exits 1 if any was skipped.
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('model', help='the exported .onnx')
    parser.add_argument('--out-dir', required=True)
    parser.add_argument('--backend', default='onnxruntime',
                        choices=['onnxruntime', 'openvino'])
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--limit', type=int, default=0,
                        help='only the first N images of a folder (0: all)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not osp.isfile(args.model):
        sys.exit(f'error: model file {args.model!r} not found')
    try:
        images = list_images(args.inputs, args.limit)
    except ValueError as e:
        sys.exit(f'error: {e}')
    register_all_modules()
    model = EmbedMaskONNXModel(args.model, args.backend,
                               precision=args.precision)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)
    results = model(images)
    for result in results:
        path = result.img_path
        out_file = osp.join(args.out_dir,
                            osp.splitext(osp.basename(path))[0] + '.png')
        visualizer.add_datasample(
            osp.basename(path), mmcv.imread(path, channel_order='rgb'),
            data_sample=result, draw_gt=False, pred_score_thr=args.score_thr,
            out_file=out_file)
        kept = int((result.pred_instances.scores > args.score_thr).sum())
        print(f'{out_file}: {kept} detections above {args.score_thr}')
    skipped = [p for p, _ in model.skipped]
    print(f'{len(results)} images processed, {len(skipped)} skipped'
          + (': ' + ', '.join(skipped) if skipped else ''))
    if skipped:
        sys.exit(1)


if __name__ == '__main__':
    main()
