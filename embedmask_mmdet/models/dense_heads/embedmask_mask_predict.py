"""Test-time masks of :class:`EmbedMaskMaskHead`: boolean masks at the output
size (``predict_by_feat``) and the probabilities they threshold
(``mask_probs_at_output``, used by the test-time augmentation merge)."""
import math
from typing import List, Optional, Tuple

import torch
from mmdet.models.utils.misc import empty_instances
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils import (location_map, mask_log_probability, mask_probability,
                     spatial_embedding)
from ..utils.mask_targets import upsample_prob
from ..utils.inference_settings import MaskInferenceSettings
from ..utils.aligned_paste import (paste_masks_aligned_bilinear,
                                   resample_aligned_bilinear)
from ..utils.mask_paste import (chunk_size, crop_masks_to_boxes, paste_masks,
                                resample_to_output, window_log_prob)

__all__ = ['EmbedMaskMaskPredictMixin']


class EmbedMaskMaskPredictMixin:
    """The predict half of :class:`EmbedMaskMaskHead` (its own file to keep
    both readable); it uses the head's ``alignment``, ``mask_out_stride``,
    ``prob_stride``, ``coord_scale``, ``coord_norm``, ``settings`` (its
    ``test_cfg`` resolved) and :meth:`proposal_embedding` /
    :meth:`mask_prob_at_out_stride`."""

    def predict_by_feat(self, pixel_embeds: Tensor, sem_logits: Optional[Tensor],
                        results_list: InstanceList,
                        batch_img_metas: List[dict], rescale: bool = True,
                        **kwargs) -> InstanceList:
        """Adds boolean ``masks`` at ``ori_shape`` (``img_shape`` when not
        rescaling) to each image's detections, rescaling their boxes.

        Called by :meth:`BaseMaskHead.predict`. Unlike mmdet's
        ``CondInstMaskHead``, masks are p > ``test_cfg.mask_thr`` of the
        detections' embeddings and margins: with ``alignment='adelaidet'``
        p at ``mask_out_stride`` is placed by
        :func:`paste_masks_aligned_bilinear`; otherwise, with
        ``test_cfg.mask_resample='prob'`` (default) p at ``prob_stride``
        is resampled by :func:`paste_masks`, with 'log_prob' (the FCOS
        repo) log p inside each box's window of cells
        (:func:`window_log_prob`, ``test_cfg.window_padding`` cells) is
        resampled and compared with log ``mask_thr``, and with 'embedding'
        p is evaluated at every output pixel on embeddings from
        :meth:`pixel_embedding_at`. ``test_cfg.crop_to_box`` clears pixels
        farther than ``crop_padding`` x ``mask_out_stride`` (scaled to the
        output) outside the box. Boxes are scaled from ``img_shape`` to
        the output size and clipped to it.

        Args:
            pixel_embeds (Tensor): Pixel embeddings (B, D, H, W) from
                :meth:`forward`.
            sem_logits (Tensor, optional): Unused (None at test time).
            results_list (list[:obj:`InstanceData`]): Detections of each
                image from the box head, in ``img_shape`` coordinates, with
                ``bboxes``, ``embeddings``, ``margins`` and ``points``.
            batch_img_metas (list[dict]): Meta information of each image;
                ``img_shape`` and ``ori_shape`` are used.
            rescale (bool): Masks and boxes at ``ori_shape`` if True, else
                at ``img_shape``. Defaults to True.
            **kwargs: Ignored.

        Returns:
            list[:obj:`InstanceData`]: Per image, a copy of the detections
            with rescaled ``bboxes`` and ``masks`` (N, out_h, out_w) bool;
            an image without detections gets its (empty) results with
            empty ``masks`` of the output size.
        """
        assert len(pixel_embeds) == len(results_list) == len(batch_img_metas)
        settings = self.settings
        outputs = [None] * len(results_list)
        # images of one geometry (most batches: all of them) share every op
        groups = {}
        for i, (results, img_meta) in enumerate(zip(results_list,
                                                    batch_img_metas)):
            if len(results) == 0:
                empty = empty_instances([img_meta], pixel_embeds.device,
                                        task_type='mask',
                                        instance_results=[results])[0]
                if not rescale:
                    # empty_instances always uses ori_shape
                    empty.masks = empty.masks.new_zeros(
                        (0, *img_meta['img_shape'][:2]))
                outputs[i] = empty
            else:
                geometry = self.output_geometry(img_meta, rescale)[:2]
                groups.setdefault(geometry, []).append(i)
        for inds in groups.values():
            masks = self._predict_group(
                pixel_embeds[inds], [results_list[i] for i in inds],
                batch_img_metas[inds[0]], rescale, settings)
            for i, image_masks in zip(inds, masks):
                results = results_list[i].clone()
                results.bboxes = self.rescale_boxes(
                    results.bboxes, batch_img_metas[i], rescale)
                results.masks = image_masks
                outputs[i] = results
        return outputs

    def output_geometry(self, img_meta: dict, rescale: bool
                        ) -> Tuple[Tuple[int, int], Tuple[int, int], float]:
        """Where an image's masks go: ``(img_shape, out_shape, scale)``, the
        un-padded input (img_h, img_w), the output (out_h, out_w) (``ori_shape``
        when rescaling, else ``img_shape``) and max(out / img), the factor of
        the crop-to-box padding."""
        img_h, img_w = img_meta['img_shape'][:2]
        out_h, out_w = img_meta['ori_shape'][:2] if rescale else (img_h, img_w)
        # float32, as the boxes are scaled
        scale = float(torch.tensor([out_w / img_w, out_h / img_h],
                                   device='cpu').max())
        return (img_h, img_w), (out_h, out_w), scale

    def rescale_boxes(self, bboxes: Tensor, img_meta: dict, rescale: bool,
                      clip: bool = True) -> Tensor:
        """Boxes (N, 4) from ``img_shape`` to the output size, clipped to it
        unless ``clip=False``."""
        (img_h, img_w), (out_h, out_w), _ = self.output_geometry(img_meta,
                                                                 rescale)
        scale = bboxes.new_tensor([out_w / img_w, out_h / img_h])
        bboxes = bboxes * scale.repeat(2)
        if clip:
            bboxes[:, 0::2] = bboxes[:, 0::2].clamp(0, out_w)
            bboxes[:, 1::2] = bboxes[:, 1::2].clamp(0, out_h)
        return bboxes

    def crop_padding_px(self, img_meta: dict, rescale: bool) -> float:
        """``test_cfg.crop_padding`` x ``mask_out_stride``, in output pixels."""
        return self.settings.crop_padding * self.mask_out_stride * \
            self.output_geometry(img_meta, rescale)[2]

    def mask_probs_at_output(self, pixel_embed: Tensor, results: InstanceData,
                             img_meta: dict, rescale: bool = True) -> Tensor:
        """p of each detection at every output pixel, (N, out_h, out_w)
        float32: the values :meth:`predict_by_feat` compares with
        ``test_cfg.mask_thr`` (before its crop to the box), by the same
        placement (``alignment``, ``test_cfg.mask_resample``).

        ``predict_by_feat`` never forms these maps (it thresholds inside the
        region each detection can reach); test-time augmentation averages
        them over views. Pass detections in chunks: the output is N full
        images of floats.

        Args:
            pixel_embed (Tensor): Pixel embeddings of one image, (D, H, W).
            results (:obj:`InstanceData`): Detections in ``img_shape``
                coordinates with ``embeddings``, ``margins`` and ``points``.
            img_meta (dict): ``img_shape`` and ``ori_shape`` of the image.
            rescale (bool): Output at ``ori_shape`` if True, else at
                ``img_shape``.

        Returns:
            Tensor: (N, out_h, out_w) float32 mask probabilities.
        """
        img_shape, out_shape, _ = self.output_geometry(img_meta, rescale)
        if self.alignment == 'adelaidet':
            return resample_aligned_bilinear(
                self.mask_prob_at_out_stride(pixel_embed, results),
                self.mask_out_stride, img_shape, out_shape)
        proposal_embed = self.proposal_embedding(results)
        resample = self.settings.mask_resample
        if resample == 'prob':
            prob = mask_probability(pixel_embed, proposal_embed,
                                    results.margins)
            return resample_to_output(prob, self.prob_stride, img_shape,
                                      out_shape)
        if resample == 'log_prob':
            log_prob = self.window(mask_log_probability(
                pixel_embed, proposal_embed, results.margins), results.bboxes)
            return resample_to_output(log_prob, self.prob_stride, img_shape,
                                      out_shape).exp()
        embed = self.pixel_embedding_at(pixel_embed, img_shape, out_shape)
        return mask_probability(embed, proposal_embed, results.margins)

    def window(self, log_prob: Tensor, bboxes: Tensor) -> Tensor:
        """log p (N, h, w) at ``prob_stride`` kept inside each detection's
        window of cells (``test_cfg.window_padding``), the FCOS repo's -10
        outside (:func:`window_log_prob`); ``bboxes`` (N, 4) in input
        pixels."""
        return window_log_prob(log_prob, bboxes, self.prob_stride,
                               self.settings.window_padding)

    def padded_proposals(self, results_list: InstanceList
                         ) -> Tuple[Tensor, Tensor, Tensor]:
        """Proposal embeddings and margins of B images, padded to the most
        detections: q, s (B, N_max, D) and the (B, N_max) bool mask of real
        ones (padding has q = s = 0)."""
        counts = [len(r) for r in results_list]
        first = results_list[0].margins
        size = (len(results_list), max(counts), first.size(1))
        q, s = first.new_zeros(size), first.new_zeros(size)
        valid = first.new_zeros(size[:2], dtype=torch.bool)
        for b, results in enumerate(results_list):
            q[b, :counts[b]] = self.proposal_embedding(results)
            s[b, :counts[b]] = results.margins
            valid[b, :counts[b]] = True
        return q, s, valid

    def _predict_group(self, pixel_embeds: Tensor, results_list: InstanceList,
                       img_meta: dict, rescale: bool,
                       settings: MaskInferenceSettings) -> List[Tensor]:
        """Masks (N_b, out_h, out_w) bool of images sharing ``img_meta``'s
        geometry, every step batched over the images and detections."""
        img_shape, out_shape, _ = self.output_geometry(img_meta, rescale)
        counts = [len(r) for r in results_list]
        boxes = torch.cat([self.rescale_boxes(r.bboxes, img_meta, rescale)
                           for r in results_list]) \
            if settings.crop_to_box else None
        box_padding = self.crop_padding_px(img_meta, rescale)
        threshold = settings.mask_thr
        max_elements = settings.max_paste_elements
        q, s, valid = self.padded_proposals(results_list)
        if settings.mask_resample == 'log_prob':
            log_prob = self.window(
                mask_log_probability(pixel_embeds, q, s)[valid],
                torch.cat([r.bboxes for r in results_list]))
            masks = paste_masks(
                log_prob, self.prob_stride, img_shape, out_shape,
                math.log(threshold), boxes, box_padding, max_elements,
                regions=settings.paste_regions)
            return list(masks.split(counts))
        if self.alignment == 'adelaidet' or settings.mask_resample == 'prob':
            prob = mask_probability(pixel_embeds, q, s)[valid]
            if self.alignment == 'adelaidet':
                prob = upsample_prob(
                    prob, self.prob_stride // self.mask_out_stride,
                    self.alignment)
                masks = paste_masks_aligned_bilinear(
                    prob, self.mask_out_stride, img_shape, out_shape,
                    threshold, boxes, box_padding)
            else:
                masks = paste_masks(
                    prob, self.prob_stride, img_shape, out_shape, threshold,
                    boxes, box_padding, max_elements,
                    regions=settings.paste_regions)
            return list(masks.split(counts))
        # p at every output pixel from embeddings resampled there, with the
        # pixel's exact coordinates: sub-cell mask boundaries
        embeds = self.pixel_embedding_at(pixel_embeds, img_shape, out_shape)
        batch, num = q.shape[:2]
        masks = embeds.new_empty((sum(counts), *out_shape), dtype=torch.bool)
        # row of each real (image, detection) pair in ``masks``
        rows = torch.full((batch, num), -1, dtype=torch.long,
                          device=masks.device)
        rows[valid] = torch.arange(len(masks), device=masks.device)
        chunk = chunk_size(max_elements,
                           batch * out_shape[0] * out_shape[1])
        for i in range(0, num, chunk):
            prob = mask_probability(embeds, q[:, i:i + chunk],
                                    s[:, i:i + chunk])
            real = valid[:, i:i + chunk]
            masks[rows[:, i:i + chunk][real]] = prob[real] > threshold
        if boxes is not None:
            crop_masks_to_boxes(masks, boxes, box_padding, max_elements)
        return list(masks.split(counts))

    def pixel_embedding_at(self, pixel_embed: Tensor, img_shape: Tuple[int, int],
                           out_shape: Tuple[int, int]) -> Tensor:
        """Pixel embeddings (..., D, out_h, out_w) at the pixels of an
        ``out_shape`` image covering ``img_shape`` of the input: the conv part
        resampled bilinearly, the coordinates those of each output pixel.

        The output pixel centres' coordinates are mapped to input
        coordinates (scale ``img_shape / out_shape``) before being added.

        Args:
            pixel_embed (Tensor): Pixel embeddings (D, H, W), or (B, D, H, W)
                of B images of one geometry, at ``self.prob_stride`` (from
                :meth:`pixel_embedding`, coordinates included).
            img_shape (tuple[int, int]): (img_h, img_w), the un-padded
                input size the output covers.
            out_shape (tuple[int, int]): (out_h, out_w), the output size.

        Returns:
            Tensor: Pixel embeddings (D, out_h, out_w) or (B, D, out_h,
            out_w).
        """
        lead, (height, width) = pixel_embed.shape[:-2], pixel_embed.shape[-2:]
        cell_coords = location_map(height, width, self.prob_stride,
                                   pixel_embed.device, pixel_embed.dtype)
        conv = torch.cat([
            spatial_embedding(pixel_embed[..., :2, :, :], -cell_coords,
                              self.coord_scale, self.coord_norm),
            pixel_embed[..., 2:, :, :]
        ], dim=-3)
        conv = resample_to_output(conv.reshape(-1, height, width),
                                  self.prob_stride, img_shape, out_shape)
        conv = conv.reshape(*lead, *out_shape)
        out_coords = location_map(
            out_shape[0], out_shape[1],
            (img_shape[0] / out_shape[0], img_shape[1] / out_shape[1]),
            conv.device, conv.dtype)
        return torch.cat([
            spatial_embedding(conv[..., :2, :, :], out_coords,
                              self.coord_scale, self.coord_norm),
            conv[..., 2:, :, :]
        ], dim=-3)
