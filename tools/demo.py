"""Run a trained model on an image or a folder of images and draw the results.

    python tools/demo.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR
        [--score-thr 0.3] [--device cuda:0|cpu] [--limit N] [--amp] [--channels-last]

Each picture (masks, boxes, class names, scores, drawn by mmdet's
DetLocalVisualizer) is written to DIR/<image name>.png. An unreadable image
(empty, truncated, not an image) is skipped with a warning naming it; the
run goes on, ends with the count of skipped images and exits 1 if any was
skipped, so that scripts notice. ``--amp`` (bf16 autocast on a CPU, fp16 on
a GPU) and ``--channels-last`` (NHWC) are the fast CPU inference switches.
Masks agree with fp32: the mean IoU is >= 0.99; the figures are in
docs/deployment.md.

mmdet's ``demo/image_demo.py`` and ``DetInferencer`` run our configs too.
Unlike them, this tool keeps going through a folder with bad files: mmdet's
stops at the first one, with an OpenCV assertion that names no file. It also
takes ``--amp`` / ``--channels-last``.
"""
import argparse
import os
import os.path as osp
import sys

from contextlib import nullcontext

import torch
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS

from embedmask_mmdet.apis import amp_dtype, use_channels_last
from embedmask_mmdet.utils import UnreadableImage, list_images, read_image


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('inputs', help='an image file or a folder of images')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw detections scoring above this')
    parser.add_argument(
        '--device', default='cuda:0' if torch.cuda.is_available() else 'cpu',
        help='torch device (default: cuda:0 when CUDA is available, else cpu)')
    parser.add_argument('--limit', type=int, default=0,
                        help='only the first N images of a folder (0: all)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bf16 on a CPU, fp16 on a GPU')
    parser.add_argument('--channels-last', action='store_true',
                        help='NHWC images and conv weights')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    try:
        images = list_images(args.inputs, args.limit)
    except ValueError as e:
        sys.exit(f'error: {e}')
    model = init_detector(args.config, args.checkpoint, device=args.device)
    if args.channels_last:
        use_channels_last(model)
    device = torch.device(args.device).type
    context = torch.autocast(device, dtype=amp_dtype(device)) if args.amp \
        else nullcontext()
    visualizer = VISUALIZERS.build(model.cfg.visualizer)
    visualizer.dataset_meta = model.dataset_meta
    os.makedirs(args.out_dir, exist_ok=True)
    skipped = []
    for path in images:
        try:
            img = read_image(path, channel_order='rgb')
        except UnreadableImage as e:
            print(f'warning: skipped {e}', file=sys.stderr)
            skipped.append(path)
            continue
        with context:
            result = inference_detector(model, img[..., ::-1].copy())
        out_file = osp.join(args.out_dir,
                            osp.splitext(osp.basename(path))[0] + '.png')
        visualizer.add_datasample(
            osp.basename(path), img, data_sample=result, draw_gt=False,
            pred_score_thr=args.score_thr, out_file=out_file)
        kept = int((result.pred_instances.scores > args.score_thr).sum())
        print(f'{out_file}: {kept} detections above {args.score_thr}')
    print(f'{len(images) - len(skipped)} images processed, {len(skipped)} '
          f'skipped' + (': ' + ', '.join(skipped) if skipped else ''))
    if skipped:
        sys.exit(1)


if __name__ == '__main__':
    main()
