"""Run a trained model on an image or a folder of images and draw the results.

    python tools/demo.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR
        [--score-thr 0.3] [--device cpu] [--limit N]

Each picture (masks, boxes, class names, scores, drawn by mmdet's
DetLocalVisualizer) is written to DIR/<image name>.png.
"""
import argparse
import os
import os.path as osp
import sys

import mmcv
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw detections scoring above this')
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--limit', type=int, default=0,
                        help='only the first N images of a folder (0: all)')
    return parser.parse_args(argv)


def list_images(inputs: str, limit: int = 0):
    if osp.isdir(inputs):
        files = sorted(f for f in os.listdir(inputs)
                       if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            sys.exit(f'error: no images ({", ".join(IMG_EXTENSIONS)}) in {inputs!r}')
        files = [osp.join(inputs, f) for f in files]
        return files[:limit] if limit > 0 else files
    if not osp.isfile(inputs):
        sys.exit(f'error: input {inputs!r} is neither an image file nor a folder')
    return [inputs]


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    images = list_images(args.inputs, args.limit)
    model = init_detector(args.config, args.checkpoint, device=args.device)
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)
    for path in images:
        result = inference_detector(model, path)
        img = mmcv.imread(path, channel_order='rgb')
        out_file = osp.join(args.out_dir,
                            osp.splitext(osp.basename(path))[0] + '.png')
        visualizer.add_datasample(
            osp.basename(path), img, data_sample=result, draw_gt=False,
            pred_score_thr=args.score_thr, out_file=out_file)
        kept = int((result.pred_instances.scores > args.score_thr).sum())
        print(f'{out_file}: {kept} detections above {args.score_thr}')


if __name__ == '__main__':
    main()
