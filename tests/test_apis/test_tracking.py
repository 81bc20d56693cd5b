"""EmbeddingTracker (embedmask_mmdet/apis/tracking.py) on constructed
detections: the assignment against brute force, the distance against the
mask formula, two objects crossing head-on (IoU alone swaps their IDs, the
embeddings keep them), track birth and death, and the errors a user can
cause."""
import itertools

import numpy as np
import pytest
import torch
from mmdet.structures import DetDataSample
from mmengine.structures import InstanceData

from embedmask_mmdet.apis import (EmbeddingTracker, associate, deduplicate,
                                  embedding_distance, mask_iou_pairs)
from embedmask_mmdet.models.utils import mask_probability


def dets(boxes, embeds=None, margins=None, scores=None, labels=None,
         dim=6):
    n = len(boxes)
    embeds = torch.zeros(n, dim) if embeds is None else \
        torch.as_tensor(embeds, dtype=torch.float32)
    return InstanceData(
        bboxes=torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        scores=torch.full((n, ), 0.9) if scores is None else
        torch.as_tensor(scores, dtype=torch.float32),
        labels=torch.zeros(n, dtype=torch.long) if labels is None else
        torch.as_tensor(labels),
        embeddings=embeds,
        margins=torch.full_like(embeds, 4.) if margins is None else
        torch.as_tensor(margins, dtype=torch.float32))


def brute_force(cost, allowed):
    """(most pairs, least cost among those) over every matching of allowed
    pairs."""
    rows, cols = cost.shape
    best = (0, 0.)
    for k in range(1, min(rows, cols) + 1):
        for rs in itertools.combinations(range(rows), k):
            for cs in itertools.permutations(range(cols), k):
                if all(allowed[r, c] for r, c in zip(rs, cs)):
                    total = sum(cost[r, c] for r, c in zip(rs, cs))
                    if k > best[0] or (k == best[0] and total < best[1]):
                        best = (k, total)
    return best


def test_associate_against_brute_force():
    rng = np.random.default_rng(0)
    for trial in range(150):
        rows, cols = rng.integers(0, 5, 2)
        cost = rng.uniform(0, 2, (rows, cols))
        allowed = rng.random((rows, cols)) < rng.uniform(0.2, 1.)
        r, c = associate(cost, allowed)
        assert len(set(r)) == len(r) and len(set(c)) == len(c)
        assert allowed[r, c].all()
        k, total = brute_force(cost, allowed)
        assert len(r) == k, trial
        assert cost[r, c].sum() == pytest.approx(total, abs=1e-9), trial


def test_embedding_distance_is_the_mask_formula():
    """exp(-d_ab) = sqrt(p_a(q_b) p_b(q_a)): each embedding read as a pixel
    of the other's mask by the model's mask_probability."""
    gen = torch.Generator().manual_seed(0)
    qa, qb = torch.randn(3, 5, generator=gen), torch.randn(4, 5, generator=gen)
    sa = torch.rand(3, 5, generator=gen) + 0.1
    sb = torch.rand(4, 5, generator=gen) + 0.1
    d = embedding_distance(qa, sa, qb, sb)
    assert d.shape == (3, 4) and d.dtype == torch.float64
    # pixels: B's embeddings as a 1 x 4 map for A's masks, and vice versa
    p_a_at_b = mask_probability(qb.T[:, None, :], qa, sa)[:, 0, :]  # (3, 4)
    p_b_at_a = mask_probability(qa.T[:, None, :], qb, sb)[:, 0, :]  # (4, 3)
    torch.testing.assert_close(torch.exp(-d).float(),
                               (p_a_at_b * p_b_at_a.T).sqrt(), rtol=1e-5,
                               atol=1e-7)
    torch.testing.assert_close(embedding_distance(qb, sb, qa, sa), d.T)


def crossing(steps=8, speed=3., width=20.):
    """Two boxes of one size meeting head-on on one row, A from the left,
    B from the right."""
    for t in range(steps):
        a = speed * t
        b = 3 * width + 1 - speed * t
        yield [[a, 0, a + width, width], [b, 0, b + width, width]]


@pytest.mark.parametrize('association', ['iou', 'embedding'])
def test_crossing_keeps_ids_only_with_embeddings(association):
    # A and B differ in the non-coordinate channels; their coordinate
    # channels (0, 1) are equal, as if at the same place: ignored anyway
    emb = [[5., -5., 0, 0, 0, 0], [5., -5., 1, 1, 1, 1]]
    # no masks here: box-IoU deduplication would merge the crossing boxes
    tracker = EmbeddingTracker(association=association, dedup_iou_thr=None,
                               temperature=1.)
    ids = [tracker.track(dets(boxes, emb)).instances_id.tolist()
           for boxes in crossing(steps=16)]
    assert ids[0] == [0, 1]
    if association == 'embedding':
        assert all(i == [0, 1] for i in ids), ids
    else:
        # with one size, the swapped pairs overlap more at the frame where
        # the boxes are within 2 x speed: IoU alone swaps the IDs there
        swapped = [t for t, i in enumerate(ids) if i == [1, 0]]
        assert swapped and swapped[0] == 11, ids
        assert all(i == [1, 0] for i in ids[11:]), ids
    assert tracker.num_tracks == 2


def test_coordinate_channels_are_not_compared():
    """An object whose coordinate channels move keeps its ID; with them
    compared (coord_channels=0) the same motion breaks the match."""
    boxes = [[[0, 0, 20, 20]], [[2, 0, 22, 20]]]
    moved = [[[0., 0, 1, 1, 1, 1]], [[0.5, 0, 1, 1, 1, 1]]]
    margins = torch.tensor([[400., 400, 4, 4, 4, 4]])
    for channels, expected in ((2, [0]), (0, [1])):
        tracker = EmbeddingTracker(coord_channels=channels,
                                   min_similarity=0.1)
        for box, emb in zip(boxes, moved):
            out = tracker.track(dets(box, emb, margins))
        assert out.instances_id.tolist() == expected, channels


def test_birth_death_scores_and_classes():
    tracker = EmbeddingTracker(max_age=2, score_thr=0.5)
    box = [[0, 0, 10, 10]]
    out = tracker.track(dets(box + [[50, 50, 60, 60]], scores=[0.9, 0.3]))
    # below score_thr: neither tracked nor returned
    assert out.instances_id.tolist() == [0] and len(out) == 1
    for _ in range(2):  # unseen for max_age frames: still matched after
        assert len(tracker.track(dets([]))) == 0
    assert tracker.track(dets(box)).instances_id.tolist() == [0]
    for _ in range(3):  # unseen for max_age + 1 frames: gone
        tracker.track(dets([]))
    assert tracker.track(dets(box)).instances_id.tolist() == [1]
    # class-agnostic by default; per_class keeps labels apart
    assert tracker.track(dets(box, labels=[3])).instances_id.tolist() == [1]
    strict = EmbeddingTracker(per_class=True)
    strict.track(dets(box, labels=[0]))
    assert strict.track(dets(box, labels=[3])).instances_id.tolist() == [1]
    # frame 0 starts over; a DetDataSample is read for its pred_instances
    sample = DetDataSample(pred_instances=dets(box))
    assert tracker.track(sample, frame_id=0).instances_id.tolist() == [0]
    # the other fields of the detections come back (masks to draw)
    d = dets(box)
    d.masks = torch.ones(1, 4, 4, dtype=torch.bool)
    assert 'masks' in tracker.track(d)


def test_mask_iou_pairs_and_deduplicate():
    gen = torch.Generator().manual_seed(1)
    masks = torch.zeros(5, 40, 50, dtype=torch.bool)
    boxes = torch.tensor([[2, 3, 20, 30], [10, 5, 35, 25], [0, 0, 50, 40],
                          [30, 20, 48, 39], [5, 5, 15, 15]], dtype=torch.float)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.long().tolist()):
        m[y0:y1, x0:x1] = torch.rand(y1 - y0, x1 - x0, generator=gen) < 0.7
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    union = flat.sum(1)[:, None] + flat.sum(1)[None] - inter
    expected = inter / union
    expected.fill_diagonal_(0)
    torch.testing.assert_close(mask_iou_pairs(masks, boxes), expected)

    # one object twice (class-wise NMS keeps a second label), and two
    # crossing objects: boxes nearly equal, the hidden one's mask a sliver
    full = torch.zeros(3, 30, 60, dtype=torch.bool)
    full[0, 5:25, 10:30] = full[1, 5:25, 10:31] = True
    full[2, 5:25, 30:33] = True
    d = InstanceData(bboxes=torch.tensor([[10., 5, 30, 25], [10, 5, 31, 25],
                                          [11, 5, 33, 25]]),
                     scores=torch.tensor([0.6, 0.8, 0.7]),
                     labels=torch.tensor([0, 3, 1]), masks=full)
    kept = deduplicate(d, 0.5)
    assert kept.scores.tolist() == pytest.approx([0.8, 0.7])
    assert kept.labels.tolist() == [3, 1]
    # without masks, boxes: the crossing object goes too
    del d.masks
    assert deduplicate(d, 0.5).labels.tolist() == [3]


def test_momentum_averages_the_embedding():
    tracker = EmbeddingTracker(momentum=0.25)
    box = [[0, 0, 10, 10]]
    tracker.track(dets(box, [[0, 0, 4., 0, 0, 0]]))
    tracker.track(dets(box, [[0, 0, 0., 0, 0, 0]]))
    assert tracker.get('embeds', [0])[0].tolist() == [3., 0, 0, 0]


def test_errors_name_the_cause():
    with pytest.raises(ValueError, match='association'):
        EmbeddingTracker(association='reid')
    tracker = EmbeddingTracker()
    plain = InstanceData(bboxes=torch.zeros(1, 4), scores=torch.ones(1),
                         labels=torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="'embeddings' and 'margins'"):
        tracker.track(plain)
    # IoU alone runs on any detector's output
    iou_only = EmbeddingTracker(association='iou')
    assert iou_only.track(plain).instances_id.tolist() == [0]
