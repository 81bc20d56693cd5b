"""tools/analysis_tools/track_eval.py without a model: the ground truth of a
synthetic video given back as the tracker's output scores perfectly, the
same with two IDs swapped half-way counts the switches and loses the
crossing, and the trackers on boxes taken from the ground truth."""
import numpy as np
import pytest
import torch
from mmengine.structures import InstanceData

from analysis_tools import track_eval
from embedmask_mmdet.apis import EmbeddingTracker
from embedmask_mmdet.datasets.synthetic_video import make_synthetic_video

pytest.importorskip('motmetrics')


@pytest.fixture(scope='module')
def video():
    return make_synthetic_video(seed=2, num_frames=20, num_objects=4,
                                crossings=1)


def as_tracked(video, rename=lambda frame, obj_id: obj_id):
    out = []
    for f, objects in enumerate(video.gt):
        boxes = np.array([o['bbox'] for o in objects], float).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        out.append(InstanceData(
            bboxes=torch.as_tensor(boxes, dtype=torch.float32),
            instances_id=torch.tensor([rename(f, o['id']) for o in objects],
                                      dtype=torch.long)))
    return out


def summary(video, tracked):
    import motmetrics as mm
    acc = track_eval.accumulate(video, tracked)
    return mm.metrics.create().compute(
        acc, metrics=list(track_eval.METRICS)).iloc[0]


def test_perfect_and_swapped_ids(video):
    perfect = as_tracked(video)
    s = summary(video, perfect)
    assert s['num_switches'] == 0
    assert s['idf1'] == pytest.approx(1) and s['mota'] == pytest.approx(1)
    assert track_eval.crossings_kept(video, perfect) == 1
    # the crossing pair's IDs exchanged from frame 12 on
    swap = {0: 1, 1: 0}
    swapped = as_tracked(video, lambda f, i: swap.get(i, i) if f >= 12 else i)
    s = summary(video, swapped)
    present = sum(1 for o in video.gt[12] if o['id'] in swap)
    assert s['num_switches'] == present == 2
    assert s['idf1'] < 1
    assert track_eval.crossings_kept(video, swapped) == 0


def test_iou_xywh_against_hand_values():
    iou = track_eval.iou_xywh([[0, 0, 10, 10]], [[5, 0, 10, 10],
                                                  [20, 20, 1, 1]])
    np.testing.assert_allclose(iou, [[50 / 150, 0]])


def test_trackers_on_ground_truth_boxes(video):
    """Boxes from the ground truth, one embedding per object: the
    embedding tracker keeps every ID; the IoU tracker runs on the same
    input."""
    for association in ('embedding', 'iou'):
        tracker = EmbeddingTracker(association=association)
        tracked = []
        for f, inst in enumerate(as_tracked(video)):
            ids = inst.instances_id
            emb = torch.zeros(len(ids), 6)
            emb[torch.arange(len(ids)), 2 + ids] = 1.
            dets = InstanceData(bboxes=inst.bboxes, scores=torch.ones(
                len(ids)), labels=torch.zeros(len(ids), dtype=torch.long),
                embeddings=emb, margins=torch.full_like(emb, 4.))
            tracked.append(tracker.track(dets, f))
        s = summary(video, tracked)
        assert s['recall'] == pytest.approx(1)
        if association == 'embedding':
            assert s['num_switches'] == 0, s
