"""Instance IDs on synthetic videos: IoU + embedding association vs IoU alone.

    python tools/analysis_tools/track_eval.py [--config CONFIG]
        [--checkpoint CKPT] [--videos 6] [--frames 48] [--objects 6]
        [--crossings 2] [--seed 0] [--score-thr 0.3] [--out TABLE.md]

Generates ``--videos`` synthetic videos (embedmask_mmdet.datasets.
make_synthetic_video: the built-in shapes moving, ``--crossings`` pairs per
video meeting head-on, known IDs), runs the model once per frame, then
gives the same detections to :class:`EmbeddingTracker` with
``association='embedding'`` (ours) and ``'iou'`` (the baseline), and scores
both with ``motmetrics`` (IoU >= 0.5 to count as a match): ID switches,
IDF1, MOTA, fragmentations, and the crossings whose two objects keep their
IDs through the crossing. Prints a markdown table.

``run(...) -> dict`` and ``render(dict) -> str`` are the pieces a benchmark
calls. Needs ``motmetrics`` (``pip install motmetrics``; in the
``analysis`` extra).
"""
import argparse
import os.path as osp
import sys
import time
from typing import Dict, List, Optional

import numpy as np

try:
    from embedmask_mmdet.apis import EmbeddingTracker, deduplicate
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__)))))
    from embedmask_mmdet.apis import EmbeddingTracker, deduplicate
from embedmask_mmdet.datasets.synthetic_video import make_synthetic_video

DEFAULT_CONFIG = 'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py'
# `make demo`'s checkpoint (work_dirs/demo/last_checkpoint names it)
DEFAULT_CHECKPOINT = 'work_dirs/demo/iter_1300.pth'
# the compared trackers: name -> EmbeddingTracker arguments
TRACKERS = {
    'IoU + embedding (ours)': dict(association='embedding'),
    'IoU only': dict(association='iou'),
}
METRICS = ('num_switches', 'idf1', 'mota', 'num_fragmentations', 'precision',
           'recall')
MATCH_IOU = 0.5


def cpu_name() -> str:
    """The CPU's model name (/proc/cpuinfo), or the platform's."""
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def iou_xywh(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU (M, N) of boxes [x, y, w, h] (M, 4) and (N, 4)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(
        -1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, :2] + a[:, None, 2:],
                    b[None, :, :2] + b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    union = a[:, 2:].prod(-1)[:, None] + b[:, 2:].prod(-1)[None] - inter
    return inter / np.maximum(union, 1e-9)


def detect(model, frames, score_thr: float = 0.3,
           dedup_iou_thr: Optional[float] = 0.5) -> list:
    """The model's ``pred_instances`` of every frame above ``score_thr``, on
    the CPU, deduplicated by mask IoU as the tracker does
    (:func:`deduplicate`), then without masks (the trackers read boxes,
    scores, labels, embeddings and margins; the masks of a whole run would
    not fit in memory)."""
    from mmdet.apis import inference_detector
    out = []
    for frame in frames:
        inst = inference_detector(model, frame).pred_instances.cpu()
        inst = inst[inst.scores > score_thr]
        if dedup_iou_thr is not None:
            inst = deduplicate(inst, dedup_iou_thr)
        if 'masks' in inst:
            del inst.masks
        out.append(inst)
    return out


def accumulate(video, tracked: List) -> 'object':
    """A motmetrics accumulator of one video's tracked detections
    (per frame, InstanceData with ``bboxes`` xyxy and ``instances_id``)."""
    import motmetrics as mm
    acc = mm.MOTAccumulator(auto_id=True)
    for gt, hyp in zip(video.gt, tracked):
        gt_boxes = np.array([o['bbox'] for o in gt]).reshape(-1, 4)
        boxes = hyp.bboxes.numpy().reshape(-1, 4).astype(float)
        boxes[:, 2:] -= boxes[:, :2]
        dist = 1 - iou_xywh(gt_boxes, boxes)
        dist[dist > 1 - MATCH_IOU] = np.nan
        acc.update([o['id'] for o in gt], hyp.instances_id.tolist(), dist)
    return acc


def crossings_kept(video, tracked: List, window: int = 6) -> int:
    """Crossings after which both objects carry the IDs they had before:
    each object's most frequent matched ID in the ``window`` frames before
    the middle frame equals that of the ``window`` frames after it, and the
    two IDs differ (matches at IoU >= 0.5, greedy by IoU)."""
    mid = (len(video.frames) - 1) / 2.0

    def ids_of(obj, frames):
        seen = []
        for f in frames:
            gt = [o for o in video.gt[f] if o['id'] == obj]
            hyp = tracked[f]
            if not gt or not len(hyp):
                continue
            boxes = hyp.bboxes.numpy().astype(float)
            boxes[:, 2:] -= boxes[:, :2]
            ious = iou_xywh([gt[0]['bbox']], boxes)[0]
            if ious.max() >= MATCH_IOU:
                seen.append(int(hyp.instances_id[int(ious.argmax())]))
        return max(set(seen), key=seen.count) if seen else None

    before = range(max(0, int(mid) - window), int(mid) - 1)
    after = range(int(np.ceil(mid)) + 2,
                  min(len(video.frames), int(np.ceil(mid)) + window + 1))
    kept = 0
    for a, b in video.crossing_pairs:
        ids = [(ids_of(o, before), ids_of(o, after)) for o in (a, b)]
        kept += all(x is not None and x == y for x, y in ids) and \
            ids[0][0] != ids[1][0]
    return kept


def run(config: str = DEFAULT_CONFIG, checkpoint: str = DEFAULT_CHECKPOINT,
        num_videos: int = 6, num_frames: int = 48, num_objects: int = 6,
        crossings: int = 2, seed: int = 100, score_thr: float = 0.3,
        device: str = 'cpu', trackers: Optional[Dict[str, dict]] = None,
        model=None) -> dict:
    """Detect once per frame, track with each of ``trackers`` (default
    :data:`TRACKERS`), score with motmetrics.

    Returns:
        dict: ``setup`` (the arguments, videos / frames / gt boxes /
        crossings, the CPU, detection seconds per frame) and ``rows``, one
        per tracker: ``name``, the :data:`METRICS`, ``crossings_kept`` and
        ``track_ms_per_frame``.
    """
    import motmetrics as mm
    from mmdet.apis import init_detector
    trackers = TRACKERS if trackers is None else trackers
    if model is None:
        for path, what in ((config, 'config'), (checkpoint, 'checkpoint')):
            if not osp.isfile(path):
                raise FileNotFoundError(
                    f'{what} {path!r} not found (the demo checkpoint comes '
                    'from `make demo`; pass --config / --checkpoint)')
        model = init_detector(config, checkpoint, device=device)
    videos = [make_synthetic_video(seed + i, num_frames, num_objects,
                                   crossings) for i in range(num_videos)]
    start = time.perf_counter()
    detections = [detect(model, v.frames, score_thr) for v in videos]
    detect_s = (time.perf_counter() - start) / (num_videos * num_frames)
    rows = []
    metrics_host = mm.metrics.create()
    for name, kwargs in trackers.items():
        accs, kept, seconds = [], 0, 0.
        for video, dets in zip(videos, detections):
            # detect() deduplicated by mask IoU, before the masks went
            tracker = EmbeddingTracker(score_thr=score_thr,
                                       dedup_iou_thr=None, **kwargs)
            start = time.perf_counter()
            tracked = [tracker.track(d, f) for f, d in enumerate(dets)]
            seconds += time.perf_counter() - start
            accs.append(accumulate(video, tracked))
            kept += crossings_kept(video, tracked)
        summary = metrics_host.compute_many(
            accs, metrics=list(METRICS), generate_overall=True)
        overall = summary.loc['OVERALL']
        row = dict(name=name, crossings_kept=int(kept),
                   track_ms_per_frame=1e3 * seconds /
                   (num_videos * num_frames))
        row.update({m: float(overall[m]) for m in METRICS})
        rows.append(row)
    setup = dict(config=config, checkpoint=checkpoint, videos=num_videos,
                 frames=num_frames, objects=num_objects,
                 crossings=crossings * num_videos, seed=seed,
                 score_thr=score_thr, match_iou=MATCH_IOU,
                 gt_boxes=sum(len(g) for v in videos for g in v.gt),
                 cpu=cpu_name(), detect_s_per_frame=detect_s)
    return dict(setup=setup, rows=rows)


def render(result: dict) -> str:
    """The markdown table (and its setup line) of :func:`run`'s dict."""
    s = result['setup']
    lines = [
        f"{s['videos']} synthetic videos x {s['frames']} frames (320 x 320, "
        f"{s['objects']} objects each, {s['crossings']} head-on crossings in "
        f"all, {s['gt_boxes']} ground-truth boxes), seed {s['seed']}; "
        f"detections above {s['score_thr']} of `{s['checkpoint']}`; a match "
        f"needs IoU >= {s['match_iou']}. CPU: {s['cpu']}, detection "
        f"{s['detect_s_per_frame'] * 1e3:.0f} ms per frame.",
        '',
        '| association | ID switches | IDF1 | MOTA | fragmentations | '
        'precision | recall | crossings kept | tracking ms / frame |',
        '|---|---|---|---|---|---|---|---|---|',
    ]
    for r in result['rows']:
        lines.append(
            f"| {r['name']} | {r['num_switches']:.0f} | {r['idf1']:.3f} | "
            f"{r['mota']:.3f} | {r['num_fragmentations']:.0f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['crossings_kept']} / {s['crossings']} | "
            f"{r['track_ms_per_frame']:.2f} |")
    return '\n'.join(lines) + '\n'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    parser.add_argument('--checkpoint', default=DEFAULT_CHECKPOINT)
    parser.add_argument('--videos', type=int, default=6)
    parser.add_argument('--frames', type=int, default=48)
    parser.add_argument('--objects', type=int, default=6)
    parser.add_argument('--crossings', type=int, default=2,
                        help='head-on crossing pairs per video')
    parser.add_argument('--seed', type=int, default=100,
                        help='first video seed (0-5 tuned the temperature)')
    parser.add_argument('--score-thr', type=float, default=0.3)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--out', help='also write the table here')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    try:
        result = run(args.config, args.checkpoint, args.videos, args.frames,
                     args.objects, args.crossings, args.seed, args.score_thr,
                     args.device)
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f'error: {e}')
    table = render(result)
    print(table)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table)


if __name__ == '__main__':
    main()
