"""Test-time augmentation for EmbedMask: boxes and masks merged over views."""
from typing import List, Optional

import torch
from mmcv.ops import batched_nms
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_flip, bbox_overlaps
from mmengine.model import BaseTTAModel
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils.mask_paste import chunk_size, crop_masks_to_boxes

__all__ = ['EmbedMaskTTAModel']

FLIP_DIMS = {'horizontal': [-1], 'vertical': [-2], 'diagonal': [-2, -1]}


@MODELS.register_module()
class EmbedMaskTTAModel(BaseTTAModel):
    """Merges EmbedMask's predictions on flipped and resized views of an
    image, masks included (mmdet's ``DetTTAModel`` refuses masks).

    Per image: every view's detections are mapped to the original image
    (scaled, flipped back) and merged as mmdet merges boxes: ``batched_nms``
    with ``tta_cfg.nms``, at most ``tta_cfg.max_per_img`` kept, each with
    its winner's label and its NMS score. A kept detection then gathers one *match*
    per view, the best-scoring detection of that view with its label and box
    IoU >= ``tta_cfg.match_iou`` (in its own view, itself). Its box is the
    mean of its matches' boxes and its mask is p̄ > ``mask_thr``, p̄ the mean
    of its matches' mask probabilities at the original size (each flipped
    back), then cropped to the box when ``test_cfg.crop_to_box``.

    Why masks are merged on p, not in embedding space: each view's p comes
    from a consistent triple, that view's pixel embeddings and the proposal
    embedding and margin predicted with them. Averaging embeddings across
    views would mix offsets predicted at different scales and in mirrored
    frames under margins learnt for one frame; averaging probabilities needs
    no such conversion, works for any resize, and is the mask analogue of
    averaging box positions (Detectron's mask TTA also averages
    probabilities). With one identity view it is plain ``predict`` exactly.

    Args:
        module (dict | nn.Module): The EmbedMask model.
        tta_cfg (dict, optional): ``nms`` (default: the box head's
            ``test_cfg.nms``), ``max_per_img`` (default: the box head's),
            ``match_iou`` (default: the NMS IoU threshold).
        data_preprocessor (dict, optional): See :class:`BaseTTAModel`.

    Examples:
        >>> tta_model = dict(type='EmbedMaskTTAModel')
        >>> tta_pipeline = [  # after LoadImageFromFile
        ...     dict(type='TestTimeAug', transforms=[
        ...         [dict(type='Resize', scale=s, keep_ratio=True)
        ...          for s in [(1333, 800), (1333, 960)]],
        ...         [dict(type='RandomFlip', prob=1.),
        ...          dict(type='RandomFlip', prob=0.)],
        ...         [dict(type='PackDetInputs', meta_keys=(
        ...             'img_id', 'img_path', 'ori_shape', 'img_shape',
        ...             'scale_factor', 'flip', 'flip_direction'))]])]
    """

    def __init__(self, module, tta_cfg: Optional[dict] = None,
                 data_preprocessor=None) -> None:
        super().__init__(module=module, data_preprocessor=data_preprocessor)
        for head, method in (('bbox_head', 'predict'),
                             ('mask_head', 'mask_probs_at_output')):
            if not hasattr(getattr(self.module, head, None), method):
                raise TypeError(
                    f'EmbedMaskTTAModel: module {type(self.module).__name__} '
                    f'has no {head}.{method}; it wraps an EmbedMask model '
                    "(use mmdet's DetTTAModel for box-only detectors)")
        box = self.module.bbox_head.settings
        cfg = dict(tta_cfg or {})
        # the box head's nms when its test_cfg has one
        cfg.setdefault('nms', box.nms if box.nms is not None else dict(
            type='nms', iou_threshold=0.5))
        cfg.setdefault('max_per_img', box.max_per_img)
        cfg.setdefault('match_iou', cfg['nms'].get('iou_threshold', 0.5))
        if not 0 < cfg['match_iou'] <= 1:
            raise ValueError('EmbedMaskTTAModel: tta_cfg.match_iou must be in '
                             f'(0, 1], got {cfg["match_iou"]!r}')
        self.tta_cfg = cfg

    def test_step(self, data) -> List[DetDataSample]:
        """Predicts every view (a batch each), then merges per image.

        Args:
            data (dict | tuple | list): A batch from a ``TestTimeAug``
                pipeline: each key (or element) a list over views.

        Returns:
            list[:obj:`DetDataSample`]: One merged prediction per image,
            ``pred_instances`` with ``bboxes``, ``scores``, ``labels`` and
            ``masks`` at the original size.
        """
        if isinstance(data, dict):
            num_views = len(data[next(iter(data))])
            views = [{k: v[i] for k, v in data.items()}
                     for i in range(num_views)]
        elif isinstance(data, (tuple, list)):
            views = [[d[i] for d in data] for i in range(len(data[0]))]
        else:
            raise TypeError('EmbedMaskTTAModel: a batch is a dict, tuple or '
                            f'list of views, got {type(data).__name__}')
        predictions = [self._predict_view(view) for view in views]
        return self.merge_preds(list(zip(*predictions)))

    def _predict_view(self, data) -> List[DetDataSample]:
        """Detections in ``img_shape`` coordinates and the pixel embeddings
        of one view of a batch, before any mask is thresholded."""
        model = self.module
        data = model.data_preprocessor(data, False)
        feats = model.extract_feat(data['inputs'])
        samples = data['data_samples']
        results = model.bbox_head.predict(feats, samples, rescale=False)
        pixel_embeds = model.mask_head(feats)[0]
        for sample, result, pixel_embed in zip(samples, results,
                                               pixel_embeds):
            sample.pred_instances = result
            sample.set_field(pixel_embed, 'pixel_embed', field_type='data')
        return samples

    def merge_preds(self, data_samples_list: List[List[DetDataSample]]
                    ) -> List[DetDataSample]:
        """Merges the views of each image (see the class docstring).

        Args:
            data_samples_list (list[list[:obj:`DetDataSample`]]): Per image,
                its views from :meth:`_predict_view`.

        Returns:
            list[:obj:`DetDataSample`]: One merged prediction per image.
        """
        return [self._merge_views(list(views)) for views in data_samples_list]

    def _merge_views(self, views: List[DetDataSample]) -> DetDataSample:
        head = self.module.mask_head
        ori_shape = views[0].metainfo['ori_shape'][:2]
        boxes, clipped, scores, labels, view_of = [], [], [], [], []
        for v, view in enumerate(views):
            res = view.pred_instances
            for out, clip in ((boxes, False), (clipped, True)):
                # NMS and matching see the boxes as the model's NMS saw
                # them (unclipped); the output is clipped, as predict's
                b = head.rescale_boxes(res.bboxes, view.metainfo, True,
                                       clip=clip)
                if view.metainfo.get('flip', False):
                    b = bbox_flip(b, ori_shape,
                                  view.metainfo['flip_direction'])
                out.append(b)
            scores.append(res.scores)
            labels.append(res.labels)
            view_of.append(torch.full_like(res.labels, v))
        boxes, clipped, scores, labels, view_of = (torch.cat(t) for t in (
            boxes, clipped, scores, labels, view_of))
        merged = DetDataSample(metainfo={
            k: v for k, v in views[0].metainfo.items()
            if k not in ('flip', 'flip_direction')})
        result = InstanceData()
        if len(boxes) == 0:
            result.bboxes, result.scores, result.labels = clipped, scores, \
                labels
            result.masks = boxes.new_zeros((0, *ori_shape), dtype=torch.bool)
            merged.pred_instances = result
            return merged
        dets, keep = batched_nms(boxes, scores, labels, self.tta_cfg['nms'])
        keep = keep[:self.tta_cfg['max_per_img']]
        matches = self.view_matches(boxes, scores, labels, view_of, keep,
                                    len(views))
        found = matches >= 0
        result.bboxes = (clipped[matches.clamp(min=0)] * found[..., None]
                         ).sum(1) / found.sum(1, keepdim=True)
        # NMS's scores (soft-NMS decays them)
        result.scores = dets[:len(keep), -1]
        result.labels = labels[keep]
        result.masks = self.merge_masks(views, matches, view_of, keep,
                                        result.bboxes)
        merged.pred_instances = result
        return merged

    def view_matches(self, boxes: Tensor, scores: Tensor, labels: Tensor,
                     view_of: Tensor, keep: Tensor, num_views: int) -> Tensor:
        """Per kept detection and view, the index of its match (-1: none).

        Args:
            boxes (Tensor): All views' boxes (M, 4) in the original image.
            scores (Tensor): Their scores (M,).
            labels (Tensor): Their labels (M,).
            view_of (Tensor): Their view index (M,).
            keep (Tensor): Indices (K,) of the kept detections.
            num_views (int): V.

        Returns:
            Tensor: (K, V) int64 indices into the M detections; a kept
            detection's match in its own view is itself.
        """
        ok = (bbox_overlaps(boxes[keep], boxes) >= self.tta_cfg['match_iou']) \
            & (labels[keep][:, None] == labels[None])
        matches = []
        for v in range(num_views):
            cand = ok & (view_of == v)[None]
            best = torch.where(cand, scores[None], scores.new_tensor(-1.)
                               ).argmax(dim=1)
            matches.append(torch.where(cand.any(dim=1), best, -1))
        matches = torch.stack(matches, dim=1)
        matches[torch.arange(len(keep), device=keep.device),
                view_of[keep]] = keep
        return matches

    def merge_masks(self, views: List[DetDataSample], matches: Tensor,
                    view_of: Tensor, keep: Tensor, bboxes: Tensor) -> Tensor:
        """p̄ > ``mask_thr`` at the original size, (K, H, W) bool: p̄ the mean
        over views of the matches' p (flipped back), computed in chunks of
        kept detections (``test_cfg.max_paste_elements`` floats)."""
        head = self.module.mask_head
        settings = head.settings
        ori_shape = views[0].metainfo['ori_shape'][:2]
        num = len(keep)
        masks = bboxes.new_zeros((num, *ori_shape), dtype=torch.bool)
        offsets = torch.cumsum(torch.tensor(
            [0] + [len(v.pred_instances) for v in views[:-1]]), 0).tolist()
        chunk = chunk_size(settings.max_paste_elements,
                           ori_shape[0] * ori_shape[1])
        for start in range(0, num, chunk):
            sl = slice(start, start + chunk)
            total = bboxes.new_zeros((len(matches[sl]), *ori_shape))
            for v, view in enumerate(views):
                rows = (matches[sl, v] >= 0).nonzero()[:, 0]
                if not len(rows):
                    continue
                inds = matches[sl, v][rows] - offsets[v]
                prob = head.mask_probs_at_output(
                    view.pixel_embed, view.pred_instances[inds],
                    view.metainfo, rescale=True)
                if view.metainfo.get('flip', False):
                    prob = prob.flip(
                        FLIP_DIMS[view.metainfo['flip_direction']])
                total[rows] += prob
            count = (matches[sl] >= 0).sum(dim=1).to(total.dtype)
            torch.gt(total / count[:, None, None], settings.mask_thr,
                     out=masks[sl])
            if settings.crop_to_box:
                # the padding of each kept detection's own view
                for v, view in enumerate(views):
                    own = (view_of[keep[sl]] == v).nonzero()[:, 0]
                    if len(own):
                        masks[sl][own] = crop_masks_to_boxes(
                            masks[sl][own], bboxes[sl][own],
                            head.crop_padding_px(view.metainfo, True))
        return masks
