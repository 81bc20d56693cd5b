"""Training side of :class:`EmbedMaskBboxHead`: the FCOS targets by the
authors' rules (``center_sample_on``, ``sample_in_mask``), the losses as
``CondInstBboxHead``'s, and the positives handed to the mask head with
their embeddings, margins and predicted boxes."""
from typing import Dict, List, Optional, Tuple

import torch
from mmdet.structures.bbox import distance2bbox
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils import gt_mask_tensor

__all__ = ['EmbedMaskBboxLossMixin']


class EmbedMaskBboxLossMixin:
    """The training half of :class:`EmbedMaskBboxHead` (its own file to
    keep both readable); it uses the head's FCOS settings (``strides``,
    ``center_sampling``, ``center_sample_radius``, ``norm_on_bbox``,
    ``num_classes``), ``center_sample_on``, ``sample_in_mask`` and
    ``_split_params``."""

    def loss_by_feat(self, cls_scores: List[Tensor], bbox_preds: List[Tensor],
                     centernesses: List[Tensor], param_preds: List[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict],
                     batch_gt_instances_ignore=None) -> Dict[str, Tensor]:
        """Calculate the FCOS losses, as ``CondInstBboxHead.loss_by_feat``.

        Same losses as the parent (see there), with the targets of this
        head's :meth:`_get_targets_single` (``center_sample_on``,
        ``sample_in_mask``). Also keeps ``bbox_preds`` for
        :meth:`get_positive_infos`, whose predicted boxes the mask head's
        'best_iou_per_gt' sampling uses.

        Args:
            cls_scores (list[Tensor]): Class logits of each level,
                (B, num_classes, H, W).
            bbox_preds (list[Tensor]): Box distances of each level,
                (B, 4, H, W).
            centernesses (list[Tensor]): Centerness logits of each level,
                (B, 1, H, W).
            param_preds (list[Tensor]): Embedding and margin of each level,
                (B, 2D, H, W).
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``bboxes``, ``labels`` and (for mask
                centroids or ``sample_in_mask``) ``masks``.
            batch_img_metas (list[dict]): Meta information of each image.
            batch_gt_instances_ignore (list[:obj:`InstanceData`],
                optional): Passed on to the parent. Defaults to None.

        Returns:
            dict[str, Tensor]: ``loss_cls``, ``loss_bbox`` and
            ``loss_centerness``.
        """
        losses = super().loss_by_feat(cls_scores, bbox_preds, centernesses,
                                      param_preds, batch_gt_instances,
                                      batch_img_metas,
                                      batch_gt_instances_ignore)
        # predicted boxes choose the best proposal per gt (best_iou_per_gt)
        self._raw_positive_infos.update(bbox_preds=bbox_preds)
        return losses

    # "no gt" area of mmdet's CondInst and of the reference (INF = 1e8)
    _INF = 1e8

    def _get_targets_single(
            self, gt_instances: InstanceData, points: Tensor,
            regress_ranges: Tensor, num_points_per_lvl: List[int]
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """FCOS targets of one image: location p may take gt g iff

        - p is inside g's centre region (``center_sample_on``: mask centroid
          or box centre, +- stride * radius, clipped to the box), or inside
          the box without ``center_sampling``;
        - max(l, t, r, b) lies in p's regress range;
        - with ``sample_in_mask``: mask_g[int(y_p), int(x_p)] = 1;

        and takes, among those, the gt of smallest box area (first on ties).
        Defaults reproduce ``CondInstBboxHead._get_targets_single``.

        Args: points (P, 2), regress_ranges (P, 2), num_points_per_lvl (L,).
        Returns: labels (P,) (background = num_classes), bbox_targets (P, 4)
        in pixels, pos_inds (N,), pos_gt_inds (N,).
        """
        num_points, num_gts = points.size(0), len(gt_instances)
        gt_bboxes, gt_labels = gt_instances.bboxes, gt_instances.labels
        if num_gts == 0:
            return gt_labels.new_full((num_points,), self.num_classes), \
                gt_bboxes.new_zeros((num_points, 4)), \
                gt_bboxes.new_zeros((0,), dtype=torch.int64), \
                gt_bboxes.new_zeros((0,), dtype=torch.int64)
        masks = self._gt_masks_tensor(gt_instances)
        xs, ys = points[:, 0, None], points[:, 1, None]  # (P, 1)
        bbox_targets = torch.stack(
            (xs - gt_bboxes[:, 0], ys - gt_bboxes[:, 1],
             gt_bboxes[:, 2] - xs, gt_bboxes[:, 3] - ys), -1)  # (P, G, 4)
        if self.center_sampling:
            center_xs, center_ys = self._sample_centers(gt_bboxes, masks)
            radius = torch.cat([
                points.new_full((n, 1), stride * self.center_sample_radius)
                for stride, n in zip(self.strides, num_points_per_lvl)])
            x1 = torch.maximum(center_xs - radius, gt_bboxes[:, 0])
            y1 = torch.maximum(center_ys - radius, gt_bboxes[:, 1])
            x2 = torch.minimum(center_xs + radius, gt_bboxes[:, 2])
            y2 = torch.minimum(center_ys + radius, gt_bboxes[:, 3])
            valid = (xs > x1) & (ys > y1) & (xs < x2) & (ys < y2)
        else:
            valid = bbox_targets.min(-1)[0] > 0
        max_regress_distance = bbox_targets.max(-1)[0]
        valid &= (max_regress_distance >= regress_ranges[:, :1]) & \
            (max_regress_distance <= regress_ranges[:, 1:])
        if self.sample_in_mask:
            # before the min-area choice (reference: area = INF), so that a
            # location outside a small gt's mask can go to a larger gt
            valid &= self._points_in_masks(points, masks)
        areas = (gt_bboxes[:, 2] - gt_bboxes[:, 0]) * (
            gt_bboxes[:, 3] - gt_bboxes[:, 1])
        areas = torch.where(valid, areas[None], self._INF)  # (P, G)
        min_area, min_area_inds = areas.min(dim=1)

        labels = gt_labels[min_area_inds]
        labels[min_area == self._INF] = self.num_classes  # background
        bbox_targets = bbox_targets[range(num_points), min_area_inds]
        pos_inds = ((labels >= 0)
                    & (labels < self.num_classes)).nonzero().reshape(-1)
        pos_gt_inds = min_area_inds[labels < self.num_classes]
        return labels, bbox_targets, pos_inds, pos_gt_inds

    def _gt_masks_tensor(self, gt_instances: InstanceData) -> Optional[Tensor]:
        """(G, h, w) bool gt masks, converted once for the centroids and the
        in-mask test; None when neither needs them or there are no masks."""
        gt_masks = gt_instances.get('masks', None)
        if gt_masks is None and self.sample_in_mask:
            raise ValueError('EmbedMaskBboxHead: sample_in_mask=True needs '
                             'gt masks in gt_instances')
        need_centroid = self.center_sampling and \
            self.center_sample_on == 'mask'
        if gt_masks is None or not (need_centroid or self.sample_in_mask):
            return None
        return gt_mask_tensor(gt_instances, gt_instances.bboxes.device)

    def _sample_centers(self, gt_bboxes: Tensor,
                        masks: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        """Centre-sampling centres (G,), (G,): box centre ('box', or no
        masks, as mmdet) or mask centroid (m10 / m00, m01 / m00)."""
        if self.center_sample_on == 'box' or masks is None:
            return (gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2, \
                (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2
        # same ops as CondInstBboxHead so the default targets are bitwise equal
        h, w = masks.shape[-2:]
        yys = torch.arange(0, h, dtype=torch.float32, device=masks.device)
        xxs = torch.arange(0, w, dtype=torch.float32, device=masks.device)
        m00 = masks.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
        m10 = (masks * xxs).sum(dim=-1).sum(dim=-1)
        m01 = (masks * yys[:, None]).sum(dim=-1).sum(dim=-1)
        return m10 / m00, m01 / m00

    @staticmethod
    def _points_in_masks(points: Tensor, masks: Tensor) -> Tensor:
        """(P, G) bool: mask_g[int(y_p), int(x_p)] for points (P, 2) and
        masks (G, h, w). As the reference (which zero-pads the masks to the
        P7-grid size), a pixel beyond the mask is outside it."""
        h, w = masks.shape[-2:]
        xi, yi = points[:, 0].long(), points[:, 1].long()
        hit = masks[:, yi.clamp(0, h - 1), xi.clamp(0, w - 1)]  # (G, P)
        return (hit & (xi < w) & (yi < h)).t()

    def get_positive_infos(self) -> InstanceList:
        """Positives of each image with ``embeddings``, ``margins``,
        ``points``, ``strides``, detached predicted ``bboxes``, scores,
        centernesses and ``pos_assigned_gt_inds``.

        As ``CondInstBboxHead.get_positive_infos`` (see there; valid after
        :meth:`loss_by_feat`), with ``param_preds`` split into
        ``embeddings`` and ``margins`` and the predicted boxes added.

        Returns:
            list[:obj:`InstanceData`]: Per image, for its P positives:

            - points (Tensor): (x, y) of the FCOS locations, (P, 2).
            - strides (Tensor): Their level strides, (P,).
            - scores (Tensor): Class logits, (P, num_classes).
            - centernesses (Tensor): Centerness logits, (P, 1).
            - embeddings (Tensor): Embedding conv outputs, (P, D).
            - margins (Tensor): Margins s, (P, D).
            - pos_assigned_gt_inds (Tensor): Index of each one's gt, (P,).
            - pos_inds (Tensor): Index among the image's locations of all
              levels, (P,).
            - bboxes (Tensor): Predicted boxes (x1, y1, x2, y2) in input
              pixels, detached, (P, 4).
        """
        positive_infos = super().get_positive_infos()
        num_imgs = len(positive_infos)
        bbox_preds = torch.cat([
            b.permute(0, 2, 3, 1).reshape(num_imgs, -1, 4)
            for b in self._raw_positive_infos['bbox_preds']
        ], dim=1)
        for img_id, info in enumerate(positive_infos):
            self._split_params(info)
            # training-mode regressions are normalised by the stride
            distances = bbox_preds[img_id][info.pos_inds].detach()
            if self.norm_on_bbox:
                distances = distances * info.strides[:, None]
            info.bboxes = distance2bbox(info.points, distances)
        return positive_infos
