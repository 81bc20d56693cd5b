"""Run a trained model on images, a video, a camera or a stream and draw the
results.

    python tools/demo.py IMAGE_OR_DIR CONFIG CHECKPOINT --out-dir DIR
        [--score-thr 0.3] [--device cuda:0|cpu] [--limit N] [--amp]
        [--channels-last] [--json none|rle|polygon] [--show]
        [--slice H W [--overlap 0.25]]
    python tools/demo.py VIDEO|CAMERA_INDEX|URL CONFIG CHECKPOINT
        [--out-video OUT.mp4] [--show] [--max-frames N]
        [--json none|rle|polygon --out-dir DIR] [--track] [...]

Images: each picture (masks, boxes, class names, scores, drawn by mmdet's
DetLocalVisualizer) is written to DIR/<image name>.png; with ``--json rle``
or ``--json polygon`` also DIR/<image name>.json (the detections above
``--score-thr``: box [x, y, w, h], score, label, class, the mask as RLE or
polygons; embedmask_mmdet.utils.image_result). An unreadable image (empty,
truncated, not an image) is skipped with a warning naming it; the run goes
on, ends with the count of skipped images and exits 1 if any was skipped, so
that scripts notice.

Videos (a file with a video extension), cameras (an index such as ``0``)
and streams (rtsp://, http://...): every frame is predicted and drawn the
same way; ``--out-video`` writes the drawn frames (mp4v, the source's fps,
25 when it reports none), ``--show`` shows them (q or Esc stops),
``--max-frames`` stops after N frames, ``--json`` writes one JSON line per
frame to DIR/<video name>.jsonl (``--out-dir``) or beside ``--out-video``.
Frames that fail to decode are skipped and counted; the run ends at the end
of the stream or on Ctrl-C, prints the frame count and the frames per second
and exits 0 (embedmask_mmdet.apis.run_video). ``--track`` gives the
detections instance IDs across frames (embedmask_mmdet.apis.EmbeddingTracker:
box IoU and the margin-weighted distance of the detections' embeddings) and
draws them with mmdet's TrackLocalVisualizer: colour by ID, the ID after the
class name.

``--slice H W`` predicts in tiles of H x W image pixels overlapping by
``--overlap`` (images and frames), masks joined across tiles: the tiles'
pixel embeddings stitched into one map, one NMS
(embedmask_mmdet.apis.EmbedMaskSlicedInferencer, see
docs/large_images_and_video.md).

``--amp`` (bf16 autocast on a CPU, fp16 on a GPU) and ``--channels-last``
(NHWC) are the fast CPU inference switches. Masks agree with fp32: the mean
IoU is >= 0.99; the figures are in docs/deployment.md.

mmdet's ``demo/image_demo.py`` and ``DetInferencer`` run our configs too.
Unlike them, this tool keeps going through a folder with bad files: mmdet's
stops at the first one, with an OpenCV assertion that names no file. It also
takes ``--amp`` / ``--channels-last`` and videos.
"""
import argparse
import json
import os
import os.path as osp
import sys
from contextlib import nullcontext
from functools import partial

import numpy as np
import torch
from mmdet.apis import inference_detector, init_detector
from mmdet.registry import VISUALIZERS

from embedmask_mmdet.apis import (EmbeddingTracker,
                                  EmbedMaskSlicedInferencer, amp_dtype,
                                  is_video_source, open_capture, run_video,
                                  source_name, use_channels_last)
from embedmask_mmdet.utils import (UnreadableImage, image_result, list_images,
                                   read_image)

JSON_CHOICES = ('none', 'rle', 'polygon')


def add_output_args(parser: argparse.ArgumentParser) -> None:
    """The options tools/demo.py and tools/deployment/onnx_demo.py share."""
    parser.add_argument(
        '--out-dir', help='folder for the PNGs and .json files (required '
        'for images; for a video, where --json writes its .jsonl)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='draw (and write with --json) detections '
                        'scoring above this')
    parser.add_argument('--limit', type=int, default=0,
                        help='only the first N images of a folder (0: all)')
    parser.add_argument(
        '--json', default='none', choices=JSON_CHOICES,
        help='also write the detections as JSON, masks as RLE or polygons: '
        'OUT_DIR/<image>.json per image, one line per frame for a video')
    parser.add_argument('--out-video',
                        help='video input: write the drawn frames here (.mp4)')
    parser.add_argument('--show', action='store_true',
                        help='show the drawn images / frames in a window')
    parser.add_argument('--max-frames', type=int, default=0,
                        help='video input: stop after N frames (0: all)')


def check_output_args(args) -> bool:
    """Whether ``args.inputs`` is a video source; exits with a message on
    options that do not fit the input."""
    video = is_video_source(args.inputs)
    if video:
        if args.limit:
            sys.exit('error: --limit is for a folder of images; use '
                     '--max-frames for a video')
        if args.json != 'none' and not (args.out_dir or args.out_video):
            sys.exit(f'error: --json {args.json} with a video writes a .jsonl '
                     'into --out-dir or beside --out-video: give one')
    else:
        if args.out_video or args.max_frames:
            sys.exit(f'error: --out-video / --max-frames are for a video, '
                     f'camera or stream input; {args.inputs!r} is not one '
                     '(video extensions: .mp4, .avi, ...; a camera index '
                     'such as 0; rtsp:// or http:// URLs)')
        if not args.out_dir:
            sys.exit('error: --out-dir is required for image inputs')
    return video


def jsonl_path(args) -> str:
    """Where a video's --json lines go."""
    if args.out_dir:
        return osp.join(args.out_dir, source_name(args.inputs) + '.jsonl')
    return osp.splitext(args.out_video)[0] + '.jsonl'


def draw(visualizer, name, image_rgb, sample, score_thr, out_file=None):
    """mmdet's DetLocalVisualizer on an RGB image: the drawn RGB image."""
    visualizer.add_datasample(name, image_rgb, data_sample=sample,
                              draw_gt=False, pred_score_thr=score_thr,
                              out_file=out_file)
    return visualizer.get_image()


def write_image_outputs(args, visualizer, path, image_rgb, sample,
                        classes) -> None:
    """DIR/<image>.png (and with --json DIR/<image>.json) for one image,
    shown with --show; prints what was written."""
    stem = osp.join(args.out_dir, osp.splitext(osp.basename(path))[0])
    drawn = draw(visualizer, osp.basename(path), image_rgb, sample,
                 args.score_thr, out_file=stem + '.png')
    if args.show:
        visualizer.show(drawn, win_name=osp.basename(path), wait_time=0)
    kept = int((sample.pred_instances.scores > args.score_thr).sum())
    print(f'{stem}.png: {kept} detections above {args.score_thr}')
    if args.json != 'none':
        doc = image_result(sample.pred_instances, args.json, args.score_thr,
                           classes=classes, image=path)
        with open(stem + '.json', 'w') as f:
            json.dump(doc, f)
        dropped = doc['dropped_contours']
        print(f'{stem}.json: {len(doc["instances"])} detections, '
              f'{args.json} masks' + (f', {dropped} contours of < 3 points '
                                      'dropped' if dropped else ''))


def run_video_source(args, predict, visualizer, classes) -> None:
    """The video loop of both demos: ``predict(BGR frame)`` -> a data
    sample; draws, writes --out-video / --json, shows; prints the summary;
    exits 1 only if the source cannot be opened."""
    try:
        capture = open_capture(args.inputs)
    except ValueError as e:
        sys.exit(f'error: {e}')
    lines = None
    if args.json != 'none':
        path = jsonl_path(args)
        os.makedirs(osp.dirname(path) or '.', exist_ok=True)
        lines = open(path, 'w')

    def process(frame, index):
        sample = predict(frame)
        if lines is not None:
            doc = image_result(sample.pred_instances, args.json,
                               args.score_thr, classes=classes, frame=index)
            lines.write(json.dumps(doc) + '\n')
        if not (args.out_video or args.show):
            return None
        # the visualizer draws on RGB; VideoWriter and imshow take BGR
        drawn = draw(visualizer, 'frame', frame[..., ::-1], sample,
                     args.score_thr)
        return np.ascontiguousarray(drawn[..., ::-1])

    try:
        run_video(capture, process, out_video=args.out_video, show=args.show,
                  max_frames=args.max_frames)
    except ValueError as e:  # the writer cannot open its file
        sys.exit(f'error: {e}')
    finally:
        if lines is not None:
            lines.close()
            print(f'detections written to {lines.name}')


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        'inputs', help='an image file, a folder of images, a video file, a '
        'camera index (0) or a stream URL (rtsp://, http://)')
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file')
    add_output_args(parser)
    parser.add_argument(
        '--device', default='cuda:0' if torch.cuda.is_available() else 'cpu',
        help='torch device (default: cuda:0 when CUDA is available, else cpu)')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bf16 on a CPU, fp16 on a GPU')
    parser.add_argument('--channels-last', action='store_true',
                        help='NHWC images and conv weights')
    parser.add_argument('--track', action='store_true',
                        help='video input: instance IDs across frames, drawn '
                        'as colours and numbers')
    parser.add_argument('--slice', type=int, nargs=2, metavar=('H', 'W'),
                        help='predict in tiles of H x W image pixels, masks '
                        'joined across tiles (sliced inference)')
    parser.add_argument('--overlap', type=float, default=0.25,
                        help='with --slice: least share of a tile shared '
                        'with each neighbour')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    video = check_output_args(args)
    if args.track and not video:
        sys.exit('error: --track is for a video, camera or stream input')
    if not video:
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
    classes = model.dataset_meta.get('classes')
    infer = partial(inference_detector, model)
    if args.slice:
        try:
            infer = EmbedMaskSlicedInferencer(
                model, slice_size=args.slice, overlap=args.overlap)
        except ValueError as e:
            sys.exit(f'error: --slice: {e}')

    if video:
        tracker = None
        if args.track:
            tracker = EmbeddingTracker(score_thr=args.score_thr)
            visualizer = VISUALIZERS.build(
                dict(type='TrackLocalVisualizer', name='track_visualizer'))
            visualizer.dataset_meta = model.dataset_meta

        def predict(frame):
            with context:
                sample = infer(frame)
            if tracker is not None:
                sample.pred_track_instances = tracker.track(sample)
            return sample

        run_video_source(args, predict, visualizer, classes)
        return

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
            result = infer(img[..., ::-1].copy())
        write_image_outputs(args, visualizer, path, img, result, classes)
    print(f'{len(images) - len(skipped)} images processed, {len(skipped)} '
          f'skipped' + (': ' + ', '.join(skipped) if skipped else ''))
    if skipped:
        sys.exit(1)


if __name__ == '__main__':
    main()
