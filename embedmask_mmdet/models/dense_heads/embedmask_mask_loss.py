"""Training losses of :class:`EmbedMaskMaskHead`: the positives whose masks
are trained, the mask loss on logit(p) against the gt masks' cell targets,
and the auxiliary semantic focal loss."""
from typing import List, Optional, Tuple

import torch
from mmdet.models.utils import unpack_gt_instances
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import InstanceList, OptInstanceList
from torch import Tensor

from ..utils import mask_logit
from ..utils.mask_targets import cell_targets, gt_mask_tensor, pad_gt_masks

__all__ = ['EmbedMaskMaskLossMixin']


class EmbedMaskMaskLossMixin:
    """The loss half of :class:`EmbedMaskMaskHead` (its own file to keep
    both readable); it uses the head's ``sampling``,
    ``max_masks_to_train``, ``mask_out_stride``, ``alignment``,
    ``prob_eps``, ``loss_mask`` / ``loss_mask_norm``, ``num_classes``,
    ``semantic_stride``, ``loss_semantic`` and
    :meth:`mask_prob_at_out_stride`."""

    def loss(self, x: Tuple[Tensor], batch_data_samples,
             positive_infos: OptInstanceList = None, **kwargs) -> dict:
        """``BaseMaskHead.loss``: the forward, the gt masks padded to the
        batch input shape, :meth:`loss_by_feat`. The padding keeps the gt
        masks' tensor that the box head already made
        (:func:`pad_gt_masks`), so they are rasterised once per image and
        step, not again here and for the semantic targets."""
        outs = self(x, positive_infos)
        batch_gt_instances, batch_gt_instances_ignore, batch_img_metas = \
            unpack_gt_instances(batch_data_samples)
        for gt_instances, img_meta in zip(batch_gt_instances,
                                          batch_img_metas):
            pad_gt_masks(gt_instances, img_meta['batch_input_shape'])
        return self.loss_by_feat(
            *outs, batch_gt_instances=batch_gt_instances,
            batch_img_metas=batch_img_metas, positive_infos=positive_infos,
            batch_gt_instances_ignore=batch_gt_instances_ignore, **kwargs)

    def sample_positives(self, positive_infos: InstanceList,
                         batch_gt_instances: InstanceList) -> InstanceList:
        """Positives whose masks are trained, per ``self.sampling``.

        'all_positives' keeps every positive; 'best_iou_per_gt' keeps, per
        gt, the positive whose predicted box has the highest IoU with that
        gt's box (the first such positive on ties). Then, if the batch still
        holds more than ``max_masks_to_train`` (>= 0) positives, that many
        are drawn at random over the whole batch.

        Args:
            positive_infos (list[:obj:`InstanceData`]): Positives of each
                image from :meth:`EmbedMaskBboxHead.get_positive_infos`;
                uses ``pos_assigned_gt_inds``, ``bboxes`` (for
                'best_iou_per_gt') and ``pos_inds``.
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image; ``bboxes`` is used by 'best_iou_per_gt'.

        Returns:
            list[:obj:`InstanceData`]: The kept positives of each image (a
            subset of that image's ``positive_infos``, possibly empty).
        """
        sampled = []
        for info, gt in zip(positive_infos, batch_gt_instances):
            if self.sampling == 'best_iou_per_gt' and len(info) > 0:
                gt_inds = info.pos_assigned_gt_inds
                ious = bbox_overlaps(info.bboxes, gt.bboxes[gt_inds],
                                     is_aligned=True)
                best = ious.new_full((len(gt), ), -1.).scatter_reduce(
                    0, gt_inds, ious, reduce='amax')
                is_best = (ious == best[gt_inds]).nonzero().flatten()
                # one positive per gt even when IoUs tie
                _, first = torch.unique(gt_inds[is_best], return_inverse=True)
                keep = is_best.new_full((int(first.max()) + 1 if len(first) else 0, ),
                                        len(info))
                keep = keep.scatter_reduce(0, first, is_best, reduce='amin')
                info = info[keep]
            sampled.append(info)
        total = sum(len(info) for info in sampled)
        if 0 <= self.max_masks_to_train < total:
            device = sampled[0].pos_inds.device
            chosen = torch.zeros(total, dtype=torch.bool, device=device)
            chosen[torch.randperm(total, device=device)[:self.max_masks_to_train]] = True
            sampled = [info[sel] for info, sel in
                       zip(sampled, chosen.split([len(i) for i in sampled]))]
        return sampled

    def loss_by_feat(self, pixel_embeds: Tensor, sem_logits: Optional[Tensor],
                     batch_gt_instances: InstanceList,
                     batch_img_metas: List[dict], positive_infos: InstanceList,
                     **kwargs) -> dict:
        """Mask loss on the masks of the sampled positives (mean over
        instances, or per image with ``loss_mask_norm='images'``, see
        :meth:`mask_loss`) and, optionally, the semantic loss.

        Called by :meth:`BaseMaskHead.loss`, which pads the gt masks to
        ``batch_input_shape``. Unlike mmdet's ``CondInstMaskHead`` (dice
        loss on dynamic-conv mask logits), the positives are first sampled
        (:meth:`sample_positives`) and the loss is ``loss_mask`` on
        logit(p) at ``mask_out_stride`` against the gt masks' cell targets
        (:func:`cell_targets`), both cropped to their common size. With no
        sampled positive in the batch the mask loss is an exact zero that
        still reaches every parameter.

        Args:
            pixel_embeds (Tensor): Pixel embeddings (B, D, H, W) from
                :meth:`forward`.
            sem_logits (Tensor, optional): Semantic logits
                (B, num_classes, h_s, w_s) at ``semantic_stride``, or None
                (no semantic loss).
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks``, ``labels`` and ``bboxes``.
            batch_img_metas (list[dict]): Meta information of each image
                (unused).
            positive_infos (list[:obj:`InstanceData`]): Positives of each
                image from :meth:`EmbedMaskBboxHead.get_positive_infos`
                (``embeddings``, ``margins``, ``points``, ``bboxes``,
                ``pos_assigned_gt_inds``, ``pos_inds``); must not be None.
            **kwargs: Ignored (e.g. ``batch_gt_instances_ignore``).

        Returns:
            dict[str, Tensor]: ``loss_mask`` and, when ``sem_logits`` is
            given, ``loss_semantic``; scalar tensors.
        """
        assert positive_infos is not None, \
            'EmbedMaskMaskHead needs the positives of the box head'
        sampled = self.sample_positives(positive_infos, batch_gt_instances)
        logits, targets, weights = [], [], []
        for pixel_embed, info, gt in zip(pixel_embeds, sampled,
                                         batch_gt_instances):
            if len(info) == 0:
                continue
            gt_masks = cell_targets(gt_mask_tensor(gt, pixel_embed.device),
                                    self.mask_out_stride, self.alignment)
            prob = self.mask_prob_at_out_stride(pixel_embed, info)
            h = min(prob.size(1), gt_masks.size(1))
            w = min(prob.size(2), gt_masks.size(2))
            logits.append(mask_logit(prob[:, :h, :w], self.prob_eps))
            targets.append(gt_masks[info.pos_assigned_gt_inds, :h, :w].float())
            weights.append(prob.new_full((len(info), ), 1. / len(info)))
        if logits:
            # float32 whatever the autocast state: the loss is exact
            with torch.autocast(pixel_embeds.device.type, enabled=False):
                loss_mask = self.mask_loss(torch.cat(logits).float(),
                                           torch.cat(targets),
                                           torch.cat(weights), len(sampled))
        else:
            # no positive: exact zero that still reaches every parameter
            loss_mask = pixel_embeds.sum() * 0. + sum(
                info.embeddings.sum() * 0. + info.margins.sum() * 0.
                for info in positive_infos)
        losses = dict(loss_mask=loss_mask)
        if sem_logits is not None:
            losses['loss_semantic'] = self.semantic_loss(
                sem_logits, batch_gt_instances)
        return losses

    def mask_loss(self, logits: Tensor, targets: Tensor, weights: Tensor,
                  num_imgs: int) -> Tensor:
        """``loss_mask`` on (M, h, w) logits and targets per
        ``loss_mask_norm``: mean over the M masks, or Σ_img mean_img / B with
        ``weights`` (M,) = 1 / (masks of the mask's image).

        Args:
            logits (Tensor): Mask logits of the M trained masks, (M, h, w),
                float32.
            targets (Tensor): Binary targets as floats, (M, h, w).
            weights (Tensor): Per-mask weights (M,), 1 / (number of trained
                masks of the mask's image); used only with 'images'.
            num_imgs (int): B, the number of images in the batch, empty
                ones included; used only with 'images'.

        Returns:
            Tensor: The mask loss, a scalar.
        """
        if self.loss_mask_norm == 'instances':
            return self.loss_mask(logits, targets)
        return self.loss_mask(logits, targets, weight=weights,
                              avg_factor=float(num_imgs),
                              reduction_override='mean')

    def semantic_targets(self, batch_gt_instances: InstanceList,
                         stride: int, size: Tuple[int, int]) -> Tensor:
        """Class of the smallest gt covering each cell centre, ``num_classes``
        for background; (B, h, w).

        A cell is covered by a gt when its :func:`cell_targets` target (per
        ``self.alignment``) is set; "smallest" is by the mask's area in
        pixels. Cells beyond the gt masks' cells stay background.

        Args:
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks`` and ``labels``.
            stride (int): Stride of the cells.
            size (tuple[int, int]): (h, w), the size of the target maps.

        Returns:
            Tensor: Class targets (B, h, w), of ``gt.labels``' dtype.
        """
        targets = []
        for gt in batch_gt_instances:
            full = gt_mask_tensor(gt, gt.labels.device)
            masks = cell_targets(full, stride, self.alignment)
            target = gt.labels.new_full(size, self.num_classes)
            if len(masks):
                h = min(size[0], masks.size(1))
                w = min(size[1], masks.size(2))
                masks = masks[:, :h, :w]
                # the smallest object by its area in pixels, as AdelaiDet
                areas = full.flatten(1).sum(1).float()
                cost = torch.where(masks, areas[:, None, None],
                                   areas.new_tensor(float('inf')))
                min_cost, inds = cost.min(dim=0)
                target[:h, :w] = torch.where(
                    torch.isinf(min_cost), target[:h, :w], gt.labels[inds])
            targets.append(target)
        return torch.stack(targets)

    def semantic_loss(self, sem_logits: Tensor,
                      batch_gt_instances: InstanceList) -> Tensor:
        """Focal loss of the auxiliary per-pixel classification at
        ``semantic_stride``.

        Targets come from :meth:`semantic_targets`; the loss is averaged
        over the number of foreground cells in the batch (at least 1).

        Args:
            sem_logits (Tensor): Semantic logits (B, num_classes, h, w).
            batch_gt_instances (list[:obj:`InstanceData`]): Gt instances of
                each image with ``masks`` and ``labels``.

        Returns:
            Tensor: The semantic loss (``loss_semantic``), a scalar.
        """
        b, c, h, w = sem_logits.shape
        stride = self.semantic_stride
        targets = self.semantic_targets(batch_gt_instances, stride, (h, w))
        targets = targets.flatten()
        # a tensor, not a float: no host sync in the training step
        num_pos = (targets < self.num_classes).sum().float().clamp(min=1.)
        # float32 under autocast: the loss is exact
        return self.loss_semantic(
            sem_logits.float().permute(0, 2, 3, 1).reshape(-1, c), targets,
            avg_factor=num_pos)
