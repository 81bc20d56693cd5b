"""Instance IDs across video frames from EmbedMask's own detections.

Every EmbedMask detection carries, in ``DetDataSample.pred_instances``, the
box head's embedding conv output ``embeddings`` (N, D) and the margins
``margins`` s (N, D) of its mask, p_i = exp(-Σ_d s_d (x_id - q_d)^2). The
proposal embedding q is ``embeddings`` with the FCOS location's coordinates
added to its first two channels (``EmbedMaskMaskHead.proposal_embedding``);
the other D - 2 channels of q *are* ``embeddings[:, 2:]``.

:class:`EmbeddingTracker` associates the detections of consecutive frames
(mmdet's :class:`BaseTracker` memo: tracks, their age, momentum averages):

- the detections above ``score_thr`` are first made one per object by a
  class-agnostic NMS on mask IoU (:func:`deduplicate`);
- cost = (1 - IoU(track box, detection box))
  + ``embed_weight`` x (1 - exp(-d / ``temperature``)), d the
  margin-weighted distance between the track's (running average) and the
  detection's embeddings (:func:`embedding_distance`);
  ``association='iou'`` drops the second term (the baseline of
  ``tools/analysis_tools/track_eval.py``);
- one Hungarian assignment (:func:`associate`, scipy's
  ``linear_sum_assignment``) over every track seen in the last
  ``max_age + 1`` frames, a pair allowed when IoU >= ``match_iou_thr``
  and, with embeddings, exp(-d) >= ``min_similarity``;
- a detection left over starts a track (a new ID); a track unmatched for
  more than ``max_age`` frames ends.

Which part of the embedding is compared: only the D - 2 channels without
coordinates (``coord_channels=2``). The two coordinate channels of q hold
where the object is (conv output + location / coord_norm): they move with
the object, and their margins are the sharpest of all (they separate
neighbouring objects in one image), so a displacement of a few pixels
between frames would swamp the distance. The box IoU already carries the
position; the remaining channels carry what the object looks like to the
model, which is what a crossing needs.

Their scale: at the mask formula's own (``temperature=1``) these channels
hardly separate anything. Measured with the demo model on 6 synthetic
videos (seeds 0-5 of ``make_synthetic_video``, 48 frames each): between
detections of one object in consecutive frames d has median 0.002 (95th
percentile 0.034), between different objects median 0.02 (25th percentile
0.006); exp(-d) is above 0.97 for most pairs of either kind. The masks are
separated by the coordinate channels (margins ~4 against ~0.2 on the
others). ``temperature=0.1`` was the best of 1, 0.1, 0.03, 0.01 and 0.003
on those videos (fewest ID switches); the table in
docs/large_images_and_video.md is measured on other seeds.

Matching is class-agnostic by default (``per_class=False``): the label of
a shape can flip between similar classes from one frame to the next
(circle / ellipse), and the embedding already separates classes; a track
takes the label of its latest detection.
"""
from typing import Optional, Tuple, Union

import numpy as np
import torch
from mmdet.models.trackers import BaseTracker
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment
from torch import Tensor

__all__ = ['ASSOCIATIONS', 'EmbeddingTracker', 'associate',
           'deduplicate', 'embedding_distance', 'mask_iou_pairs']

ASSOCIATIONS = ('embedding', 'iou')
# the cost of a forbidden pair: larger than any sum of allowed costs, so the
# assignment first takes as many allowed pairs as it can
_FORBIDDEN = 1e6


def embedding_distance(embeds_a: Tensor, margins_a: Tensor, embeds_b: Tensor,
                       margins_b: Tensor) -> Tensor:
    """Margin-weighted squared distance of two sets of embeddings.

    d_ab = Σ_d ½ (s_ad + s_bd) (q_ad - q_bd)^2

    The mask formula's energy, log p = -Σ_d s_d (x_d - q_d)^2, with one
    detection's embedding as the "pixel" of the other's mask: exp(-d_ab)
    is the geometric mean of p_a(q_b) and p_b(q_a), so d is symmetric and
    in the units the mask threshold is set in (p > 0.5: d < ln 2).
    Computed in float64 from the differences.

    Args:
        embeds_a (Tensor): q of A, (M, C).
        margins_a (Tensor): s of A, (M, C), > 0.
        embeds_b (Tensor): q of B, (N, C).
        margins_b (Tensor): s of B, (N, C), > 0.

    Returns:
        Tensor: d, (M, N) float64, >= 0.
    """
    diff = embeds_a.double()[:, None] - embeds_b.double()[None]
    margin = 0.5 * (margins_a.double()[:, None] + margins_b.double()[None])
    return (margin * diff.square()).sum(-1)


def associate(cost: np.ndarray, allowed: np.ndarray
              ) -> Tuple[np.ndarray, np.ndarray]:
    """The matching of allowed (row, column) pairs with the most pairs and,
    among those, the least total cost (Hungarian algorithm).

    Args:
        cost (np.ndarray): (M, N) finite costs.
        allowed (np.ndarray): (M, N) bool, the pairs that may be matched.

    Returns:
        tuple[np.ndarray, np.ndarray]: Matched rows and columns, each (K,).
    """
    if cost.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    rows, cols = linear_sum_assignment(np.where(allowed, cost, _FORBIDDEN))
    keep = allowed[rows, cols]
    return rows[keep], cols[keep]


def mask_iou_pairs(masks: Tensor, bboxes: Tensor) -> Tensor:
    """Mask IoU (N, N) of boolean masks (N, H, W), counted only inside the
    intersection of each pair's boxes (N, 4) xyxy (the masks' pixels
    outside a detection's box are few); 0 for boxes that do not overlap.
    Pairs are few, and each is a crop: cheap on full-HD frames too."""
    num = len(masks)
    ious = masks.new_zeros((num, num), dtype=torch.float32)
    areas = masks.flatten(1).sum(1).float()
    x0, y0 = bboxes[:, 0].floor().long(), bboxes[:, 1].floor().long()
    x1, y1 = bboxes[:, 2].ceil().long(), bboxes[:, 3].ceil().long()
    for a in range(num):
        for b in range(a + 1, num):
            l, t = max(x0[a], x0[b]), max(y0[a], y0[b])
            r, u = min(x1[a], x1[b]), min(y1[a], y1[b])
            if l >= r or t >= u:
                continue
            inter = (masks[a, t:u, l:r] & masks[b, t:u, l:r]).sum().float()
            ious[a, b] = ious[b, a] = inter / (areas[a] + areas[b] - inter
                                               ).clamp(min=1)
    return ious


def deduplicate(dets: InstanceData, iou_thr: float = 0.5) -> InstanceData:
    """The detections, in score order, without those whose mask (box,
    without masks) overlaps a better-scoring kept one by more than
    ``iou_thr``: class-agnostic NMS.

    mmdet's NMS is class-wise: one object whose box scores for two
    classes (a circle that is nearly an ellipse) comes out twice, with
    (nearly) the same box, embedding and mask. To a tracker that is one
    object; left in, the copy starts tracks of its own and takes the
    object's ID on the frames where it outscores the original. Masks, not
    boxes, when there are: two objects crossing have boxes that overlap
    almost fully while the hidden one's visible mask is a sliver beside
    the front one's.
    """
    if len(dets) < 2:
        return dets
    dets = dets[dets.scores.argsort(descending=True, stable=True)]
    if 'masks' in dets and isinstance(dets.masks, Tensor):
        ious = mask_iou_pairs(dets.masks, dets.bboxes)
    else:
        ious = bbox_overlaps(dets.bboxes.float(), dets.bboxes.float())
    keep = torch.ones(len(dets), dtype=torch.bool)
    for i in range(1, len(dets)):
        keep[i] = not (ious[i, :i][keep[:i]] > iou_thr).any()
    return dets[keep]


class EmbeddingTracker(BaseTracker):
    """IDs for EmbedMask's detections, by box IoU and embedding distance
    (see the module docstring).

    Args:
        association (str): 'embedding' (IoU and embedding distance) or
            'iou' (IoU alone). Defaults to 'embedding'.
        score_thr (float): Detections scoring above this are tracked (and
            start tracks). Defaults to 0.3.
        match_iou_thr (float): Least IoU of a match. Defaults to 0.1.
        embed_weight (float): Weight of 1 - exp(-d) in the cost. Defaults
            to 1.
        min_similarity (float): Least exp(-d / temperature) of a match
            ('embedding'). Defaults to 0.
        temperature (float): The distance's scale: similarity
            exp(-d / temperature). Defaults to 0.1 (see the module
            docstring).
        max_age (int): Frames a track may go unmatched and still take a
            detection. Defaults to 5.
        momentum (float): Weight of a new detection in the track's running
            embedding and margins. Defaults to 0.5.
        coord_channels (int): Leading embedding channels left out of the
            distance (the coordinate channels). Defaults to 2.
        per_class (bool): Match only detections of the track's label.
            Defaults to False.
        dedup_iou_thr (float, optional): Class-agnostic NMS on the
            detections first (:func:`deduplicate`; mask IoU); None: none.
            Defaults to 0.5.
    """

    def __init__(self, association: str = 'embedding',
                 score_thr: float = 0.3, match_iou_thr: float = 0.1,
                 embed_weight: float = 1., min_similarity: float = 0.,
                 temperature: float = 0.1, max_age: int = 5,
                 momentum: float = 0.5, coord_channels: int = 2,
                 per_class: bool = False,
                 dedup_iou_thr: Optional[float] = 0.5) -> None:
        if association not in ASSOCIATIONS:
            raise ValueError(f'association must be one of {ASSOCIATIONS}, '
                             f'got {association!r}')
        if max_age < 0:
            raise ValueError(f'max_age must be >= 0, got {max_age}')
        super().__init__(momentums=dict(embeds=momentum, margins=momentum),
                         num_frames_retain=max_age + 1)
        self.association = association
        self.score_thr = score_thr
        self.match_iou_thr = match_iou_thr
        self.embed_weight = embed_weight
        self.min_similarity = min_similarity
        self.temperature = temperature
        self.dedup_iou_thr = dedup_iou_thr
        self.coord_channels = coord_channels
        self.per_class = per_class

    def reset(self) -> None:
        """Forget every track; IDs start again from 0."""
        super().reset()
        self.frame_id = -1

    def cost(self, dets: InstanceData) -> Tuple[np.ndarray, np.ndarray]:
        """(cost, allowed), each (T, N), of the memo's tracks (in ``self.ids``
        order) against ``dets``."""
        ids = self.ids
        ious = bbox_overlaps(self.get('bboxes', ids).float(),
                             dets.bboxes.float()).double()
        cost = 1 - ious
        allowed = ious >= self.match_iou_thr
        if self.association == 'embedding':
            similarity = torch.exp(-embedding_distance(
                self.get('embeds', ids), self.get('margins', ids),
                *self._embeds(dets)) / self.temperature)
            cost = cost + self.embed_weight * (1 - similarity)
            allowed &= similarity >= self.min_similarity
        if self.per_class:
            allowed &= self.get('labels', ids)[:, None] == dets.labels[None]
        return cost.cpu().numpy(), allowed.cpu().numpy()

    def _embeds(self, dets: InstanceData) -> Tuple[Tensor, Tensor]:
        if 'embeddings' not in dets or 'margins' not in dets:
            raise ValueError(
                "association='embedding' needs the detections' 'embeddings' "
                "and 'margins' (EmbedMask's pred_instances carry them); "
                f"these have {sorted(dets.keys())}. Use association='iou' "
                'for another model')
        c = self.coord_channels
        return dets.embeddings[:, c:].float(), dets.margins[:, c:].float()

    def track(self, detections: Union[DetDataSample, InstanceData],
              frame_id: Optional[int] = None) -> InstanceData:
        """Give this frame's detections IDs.

        Args:
            detections (:obj:`DetDataSample` | :obj:`InstanceData`): One
                frame's ``pred_instances`` (or the sample holding them):
                ``bboxes``, ``scores``, ``labels``, and for
                ``association='embedding'`` ``embeddings`` and ``margins``.
            frame_id (int, optional): The frame's index; None: the one after
                the previous call's. Frame 0 resets the tracker.

        Returns:
            :obj:`InstanceData`: The detections scoring above ``score_thr``,
            every field kept, with ``instances_id`` (N,) long added (mmdet's
            field of ``pred_track_instances``, which its
            ``TrackLocalVisualizer`` colours by).
        """
        if isinstance(detections, DetDataSample):
            detections = detections.pred_instances
        frame_id = self.frame_id + 1 if frame_id is None else int(frame_id)
        if frame_id == 0:
            self.reset()
        self.frame_id = frame_id
        dets = detections[detections.scores > self.score_thr]
        if self.dedup_iou_thr is not None:
            dets = deduplicate(dets, self.dedup_iou_thr)
        num = len(dets)
        ids = torch.full((num, ), -1, dtype=torch.long)
        if num and not self.empty:
            rows, cols = associate(*self.cost(dets))
            track_ids = self.ids
            for r, c in zip(rows, cols):
                ids[c] = track_ids[r]
        new = ids == -1
        ids[new] = torch.arange(self.num_tracks,
                                self.num_tracks + int(new.sum()))
        self.num_tracks += int(new.sum())
        embeds, margins = self._embeds(dets) \
            if self.association == 'embedding' else (None, None)
        self.update(ids=ids, bboxes=dets.bboxes.detach().cpu(),
                    labels=dets.labels.detach().cpu(),
                    embeds=None if embeds is None else embeds.detach().cpu(),
                    margins=None if margins is None else
                    margins.detach().cpu(), frame_ids=frame_id)
        dets.instances_id = ids.to(dets.bboxes.device)
        return dets
