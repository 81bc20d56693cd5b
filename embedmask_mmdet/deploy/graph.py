"""EmbedMask inference as one tensor program: the image tensor in; boxes,
scores, labels and the masks' closed form (or dense mask probabilities)
out, with no Python data structure or data-dependent loop in between, so
that ``torch.export`` (and from it ONNX) can capture all of it.

It runs the detector's own modules and formulas (``extract_feat``, the two
heads' ``forward``, ``proposal_embedding``, ``mask_probability``,
``mask_prob_at_out_stride``, ``window``). Restated here, because the model
writes them with boolean indexing or data-dependent loops that an exported
graph cannot hold: the candidate selection of the three candidate rules and
NMS (fixed-size tensor code, the ONNX NonMaxSuppression op); and, for
``masks='dense'`` only, where p is placed at the input size (``_upsample``,
``aligned_bilinear``) and the 'embedding' resample's arithmetic of
``EmbedMaskMaskHead.pixel_embedding_at``. The compact contract restates no
mask code: the runtime calls the mask head's own ``predict_by_feat``.
docs/design.md names the tests that hold each restatement to the model.

Shapes: K candidates, N detections, C classes, D embedding dimensions,
(H, W) the padded input, (h, w) the pixel-embedding grid at ``prob_stride``.
"""
from types import SimpleNamespace
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.utils.misc import aligned_bilinear
from torch import Tensor

from ..models.utils import (location_map, mask_log_probability,
                            mask_probability, spatial_embedding)
from .nms import multiclass_nms

# score of a padded or rejected candidate: below every real score, so NMS's
# score threshold drops it
REJECTED = -1.
# the graph's outputs per mask contract (``EmbedMaskGraph(masks=...)``)
MASK_CONTRACTS = {
    'compact': ('dets', 'labels', 'embeddings', 'margins', 'points',
                'pixel_embeds'),
    'dense': ('dets', 'labels', 'masks'),
}


class EmbedMaskGraph(nn.Module):
    """Wraps a built :class:`EmbedMask` detector (eval mode) for export.

    ``forward(image, img_shape)`` with ``image`` (1, 3, H, W) float32 (the
    data preprocessor's output: normalised, zero-padded) and ``img_shape``
    (2,) int64, the un-padded (h, w) inside it, returns

    - ``dets`` (N, 5): x1, y1, x2, y2 in input pixels, score;
    - ``labels`` (N,) int64;

    and with ``masks='compact'`` (default) the terms of the mask formula
    p = exp(-sum_d s_d (x_d - q_d)^2), which the runtime evaluates with the
    mask head's own ``predict_by_feat`` (each mask only where it can be
    above ``mask_thr``, at the original image size):

    - ``embeddings`` (N, D): the box head's embedding channels, q before
      the FCOS location's coordinates are added;
    - ``margins`` (N, D): s;
    - ``points`` (N, 2): the FCOS locations (x, y) in input pixels;
    - ``pixel_embeds`` (1, D, H / prob_stride, W / prob_stride): x, the
      pixel embeddings (coordinates included) of the padded input;

    with ``masks='dense'``:

    - ``masks`` (N, H, W) float32 mask probabilities p at every input pixel,
      before the ``mask_thr`` threshold; only the ``img_shape`` part is an
      image's (the runtime crops to it: clearing the padding would cost a
      pass over N x H x W).

    N <= ``max_dets``, by descending score, as ``EmbedMask.predict`` with
    ``rescale=False`` gives them (there: p > mask_thr at ``img_shape``).
    """

    def __init__(self, detector: nn.Module, max_dets: int = 100,
                 masks: str = 'compact') -> None:
        super().__init__()
        if masks not in MASK_CONTRACTS:
            raise ValueError(f'masks={masks!r}: use one of '
                             f'{tuple(MASK_CONTRACTS)}')
        self.detector = detector
        self.bbox_head = detector.bbox_head
        self.mask_head = detector.mask_head
        self.max_dets = int(max_dets)
        self.masks = masks
        self.eval()

    def forward(self, image: Tensor, img_shape: Tensor) -> Tuple[Tensor, ...]:
        feats = self.detector.extract_feat(image)
        cls_scores, bbox_preds, centernesses, param_preds = \
            self.bbox_head(feats)
        pixel_embed, _ = self.mask_head(feats)
        boxes, scores, labels, params, points = self.candidates(
            cls_scores, bbox_preds, centernesses, param_preds, img_shape)
        keep = self.nms(boxes, scores, labels)
        scores = scores[keep]
        if self.bbox_head.settings.score_type == 'sqrt_cls_ctr':
            scores = scores.sqrt()
        dets = torch.cat([boxes[keep], scores[:, None]], dim=1)
        embed_dim = self.bbox_head.embed_dim
        if self.masks == 'compact':
            return (dets, labels[keep], params[keep, :embed_dim],
                    params[keep, embed_dim:], points[keep], pixel_embed)
        # attributes as the mask head reads them from InstanceData, whose
        # len() would force the (unknown) number of detections to an int
        instances = SimpleNamespace(
            embeddings=params[keep, :embed_dim],
            margins=params[keep, embed_dim:],
            points=points[keep], bboxes=boxes[keep])
        masks = self.mask_probs(pixel_embed[0], instances, image.shape[-2:])
        return dets, labels[keep], masks

    def candidates(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                   centernesses: List[Tensor], param_preds: List[Tensor],
                   img_shape: Tensor) -> Tuple[Tensor, ...]:
        """Per level the top-``nms_pre`` (location, class) pairs above
        ``score_thr``, thresholded, ranked and clipped as the box head's
        ``candidate_rule`` does (``CANDIDATE_RULES``), with σ(cls) σ(ctr)
        as the NMS score. Rejected pairs keep a slot with score
        ``REJECTED``. Returns boxes (K, 4), scores (K,), labels (K,),
        params (K, 2D) and FCOS points (K, 2)."""
        settings = self.bbox_head.settings
        nms_pre, score_thr = settings.nms_pre, settings.score_thr
        rule = settings.candidate_rule
        num_classes = self.bbox_head.cls_out_channels
        sizes = [c.shape[-2:] for c in cls_scores]
        points = self.bbox_head.prior_generator.grid_priors(
            sizes, dtype=bbox_preds[0].dtype, device=bbox_preds[0].device)
        out = [[] for _ in range(5)]
        for cls, bbox, ctr, param, point in zip(
                cls_scores, bbox_preds, centernesses, param_preds, points):
            cls = cls[0].permute(1, 2, 0).reshape(-1, num_classes).sigmoid()
            ctr = ctr[0].permute(1, 2, 0).reshape(-1, 1).sigmoid()
            score = (cls * ctr).reshape(-1)
            passed = (score if rule == 'adelaidet' else cls.reshape(-1)) \
                > score_thr
            rank = torch.where(passed, cls.reshape(-1) if rule == 'mmdet'
                               else score, REJECTED)
            score = torch.where(passed, score, REJECTED)
            if nms_pre >= 0:
                # a level with fewer pairs than nms_pre is padded with
                # rejected ones: k stays a constant for any input size
                pad = rank.new_full((nms_pre,), REJECTED)
                _, top = torch.cat([rank, pad]).topk(nms_pre)
                score = torch.cat([score, pad])[top]
                top = top.clamp(max=rank.numel() - 1)
            else:
                top = torch.arange(rank.numel(), device=rank.device)
            loc = torch.div(top, num_classes, rounding_mode='floor')
            out[0].append(bbox[0].permute(1, 2, 0).reshape(-1, 4)[loc])
            out[1].append(score)
            out[2].append(top % num_classes)
            out[3].append(param[0].permute(1, 2, 0).reshape(
                -1, param.size(1))[loc])
            out[4].append(point[loc])
        distances, scores, labels, params, points = (torch.cat(t) for t in out)
        boxes = torch.cat([points - distances[:, :2],
                           points + distances[:, 2:]], dim=1)
        if rule != 'adelaidet':
            # mmdet's DistancePointBBoxCoder clips to the un-padded image,
            # the FCOS repo's clip_to_image to its last pixel
            limit = img_shape.flip(0).to(boxes.dtype).repeat(2)
            if rule == 'fcos_repo':
                limit = limit - 1
            boxes = torch.minimum(boxes.clamp(min=0), limit)
        if settings.min_bbox_size >= 0:
            wh = boxes[:, 2:] - boxes[:, :2]
            big = (wh > settings.min_bbox_size).all(dim=1)
            scores = torch.where(big, scores, REJECTED)
        return boxes, scores, labels, params, points

    def nms(self, boxes: Tensor, scores: Tensor, labels: Tensor) -> Tensor:
        """Indices of the candidates class-wise NMS keeps, the top
        ``max_per_img`` (at most ``max_dets``) by descending score."""
        settings = self.bbox_head.settings
        classes = torch.arange(self.bbox_head.cls_out_channels,
                               device=labels.device)
        class_scores = torch.where(labels[None] == classes[:, None],
                                   scores[None], REJECTED)
        max_dets = min(self.max_dets, settings.max_per_img)
        kept = multiclass_nms(boxes[None], class_scores[None], max_dets,
                              float(settings.nms['iou_threshold']),
                              REJECTED / 2)
        idx = kept[:, 2]
        order = scores[idx].argsort(descending=True)
        return idx[order[:max_dets]]

    def mask_probs(self, pixel_embed: Tensor, instances: SimpleNamespace,
                   size) -> Tensor:
        """p of the detections at every pixel of the (H, W) input, placed as
        the mask head places it at ``img_shape``."""
        head = self.mask_head
        if head.alignment == 'adelaidet':
            prob = head.mask_prob_at_out_stride(pixel_embed, instances)
            return aligned_bilinear(prob[None],
                                    head.mask_out_stride).squeeze(0)
        proposal_embed = head.proposal_embedding(instances)
        stride = head.prob_stride
        resample = head.settings.mask_resample
        if resample == 'prob':
            return _upsample(mask_probability(
                pixel_embed, proposal_embed, instances.margins), stride)
        if resample == 'log_prob':
            # log p resampled inside each box's window, returned as p:
            # exp() keeps the order, so p > mask_thr is log p > log mask_thr
            return _upsample(head.window(mask_log_probability(
                pixel_embed, proposal_embed, instances.margins),
                instances.bboxes), stride).exp()
        # the 'embedding' path of EmbedMaskMaskHead.pixel_embedding_at: the
        # conv part resampled, each pixel's own coordinates added
        cells = location_map(*pixel_embed.shape[-2:], stride,
                             pixel_embed.device, pixel_embed.dtype)
        conv = torch.cat([spatial_embedding(
            pixel_embed[:2], -cells, head.coord_scale, head.coord_norm),
            pixel_embed[2:]])
        conv = _upsample(conv, stride)
        coords = location_map(*size, 1, conv.device, conv.dtype)
        embed = torch.cat([spatial_embedding(
            conv[:2], coords, head.coord_scale, head.coord_norm), conv[2:]])
        return mask_probability(embed, proposal_embed, instances.margins)


def _upsample(maps: Tensor, stride: int) -> Tensor:
    """``resample_to_output`` of (C, h, w) stride-``stride`` maps at the
    full padded input (h x stride, w x stride): each pixel centre read
    bilinearly from the cell centres. Bilinear interpolation clamps its
    upper neighbour to the last cell, which is what the replicated cell of
    ``resample_to_output`` gives, so no pad and no crop (each a copy of
    the N x H x W output) is needed."""
    return F.interpolate(maps[None], scale_factor=float(stride),
                         mode='bilinear', align_corners=False,
                         recompute_scale_factor=False).squeeze(0)
