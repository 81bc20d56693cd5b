"""Test-time detections of :class:`EmbedMaskBboxHead`: AdelaiDet's FCOS
selection batched over the images, or mmdet's CondInst path."""
from typing import List, Optional

import torch
from mmcv.ops import batched_nms
from mmdet.structures.bbox import distance2bbox
from mmdet.utils import InstanceList
from mmengine.structures import InstanceData
from torch import Tensor

from ..utils.inference_settings import (CANDIDATE_RULES,
                                       BoxInferenceSettings, candidate_rule)

__all__ = ['EmbedMaskBboxPredictMixin', 'CANDIDATE_RULES', 'candidate_rule']


class EmbedMaskBboxPredictMixin:
    """The predict half of :class:`EmbedMaskBboxHead` (its own file to keep
    both readable); it uses the head's ``prior_generator``,
    ``cls_out_channels``, ``test_cfg`` / ``settings`` and
    ``_split_params``."""

    def _settings_for(self, cfg) -> BoxInferenceSettings:
        """The resolved settings of ``cfg`` (None: the head's own)."""
        if cfg is None or cfg is self.test_cfg:
            return self.settings
        return BoxInferenceSettings.from_cfg(cfg, type(self).__name__)

    def predict_by_feat(self, cls_scores: List[Tensor],
                        bbox_preds: List[Tensor],
                        score_factors: Optional[List[Tensor]] = None,
                        param_preds: Optional[List[Tensor]] = None,
                        batch_img_metas: Optional[List[dict]] = None,
                        cfg=None, rescale: bool = False,
                        with_nms: bool = True) -> InstanceList:
        """Detections of each image, each carrying its ``embeddings``,
        ``margins`` and FCOS ``points``/``strides``; scores per
        ``test_cfg.score_type``.

        ``test_cfg.candidate_rule`` (see ``CANDIDATE_RULES``) 'adelaidet'
        and 'fcos_repo', the authors' FCOS inference, are selected for the
        whole batch in one op per level, then NMS per image; 'mmdet' is
        mmdet's CondInst path (image by image).

        Args:
            cls_scores (list[Tensor]): Class logits per level, (B, C, H, W).
            bbox_preds (list[Tensor]): Box distances per level, (B, 4, H, W).
            score_factors (list[Tensor]): Centerness logits per level,
                (B, 1, H, W).
            param_preds (list[Tensor]): Embedding conv outputs and margins
                per level, (B, 2D, H, W).
            batch_img_metas (list[dict]): Meta information of each image.
            cfg (ConfigDict, optional): Test config; None: ``test_cfg``.
            rescale (bool): Boxes at ``ori_shape`` (mmdet's path only; the
                mask head rescales EmbedMask's). Defaults to False.
            with_nms (bool): NMS (mmdet's path only). Defaults to True.

        Returns:
            list[:obj:`InstanceData`]: Per image ``bboxes``, ``scores``,
            ``labels``, ``embeddings``, ``margins``, ``points``,
            ``strides``.
        """
        settings = self._settings_for(cfg)
        if settings.candidate_rule == 'mmdet':
            # mmdet's code reads the ConfigDict (None: self.test_cfg)
            return super().predict_by_feat(
                cls_scores, bbox_preds, score_factors, param_preds,
                batch_img_metas=batch_img_metas, cfg=cfg, rescale=rescale,
                with_nms=with_nms)
        priors = self.prior_generator.grid_priors(
            [c.shape[-2:] for c in cls_scores], dtype=bbox_preds[0].dtype,
            device=bbox_preds[0].device, with_stride=True)
        return self.predict_at_points(
            cls_scores, bbox_preds, score_factors, param_preds,
            [p[:, :2] for p in priors], [p[:, 2] for p in priors],
            batch_img_metas, settings)

    def predict_at_points(self, cls_scores: List[Tensor],
                          bbox_preds: List[Tensor],
                          score_factors: List[Tensor],
                          param_preds: List[Tensor],
                          mlvl_points: List[Tensor],
                          mlvl_strides: List[Tensor],
                          batch_img_metas: List[dict],
                          settings: Optional[BoxInferenceSettings] = None
                          ) -> InstanceList:
        """:meth:`predict_by_feat` (candidate rules 'adelaidet' and
        'fcos_repo') at locations given by their points instead of a grid.

        Each level's maps are (B, C, H, W) with ``mlvl_points`` (H W, 2)
        in row-major order; any (B, C, 1, N) strip of N locations works
        the same, which is how sliced inference
        (:class:`embedmask_mmdet.apis.EmbedMaskSlicedInferencer`) decodes
        the locations of several tiles in image coordinates with one
        selection and one NMS.

        Args:
            cls_scores, bbox_preds, score_factors, param_preds
                (list[Tensor]): As :meth:`predict_by_feat`, per level.
            mlvl_points (list[Tensor]): (x, y) of each level's locations in
                input-image pixels, (N_l, 2).
            mlvl_strides (list[Tensor]): Their strides, (N_l, ).
            batch_img_metas (list[dict]): Meta information of each image.
            settings (BoxInferenceSettings, optional): None: the head's.

        Returns:
            list[:obj:`InstanceData`]: As :meth:`predict_by_feat`.
        """
        settings = settings or self.settings
        if settings.candidate_rule == 'mmdet':
            raise ValueError(
                f'{type(self).__name__}.predict_at_points: test_cfg '
                "candidate_rule 'mmdet' (mmdet's CondInst path) selects on "
                "its own grid; set candidate_rule='adelaidet' (or "
                "'fcos_repo') in the config's model.test_cfg")
        return [self._finish(r, settings) for r in self._select_by_cls_ctr(
            [c.detach() for c in cls_scores],
            [b.detach() for b in bbox_preds],
            [f.detach() for f in score_factors],
            [p.detach() for p in param_preds],
            mlvl_points, mlvl_strides, settings, batch_img_metas)]

    def _predict_by_feat_single(self, cls_score_list: List[Tensor],
                                bbox_pred_list: List[Tensor],
                                score_factor_list: List[Tensor],
                                param_pred_list: List[Tensor],
                                mlvl_points: List[Tensor],
                                mlvl_strides: List[Tensor], img_meta: dict,
                                cfg, rescale: bool = False,
                                with_nms: bool = True) -> InstanceData:
        """mmdet's CondInst selection for one image (candidate rule
        'mmdet'), with the parameters split and scores per
        ``score_type``."""
        cfg = self.test_cfg if cfg is None else cfg
        results = super()._predict_by_feat_single(
            cls_score_list, bbox_pred_list, score_factor_list,
            param_pred_list, mlvl_points, mlvl_strides, img_meta=img_meta,
            cfg=cfg, rescale=rescale, with_nms=with_nms)
        return self._finish(results, self._settings_for(cfg))

    def _finish(self, results: InstanceData,
                settings: BoxInferenceSettings) -> InstanceData:
        results = self._split_params(results)
        if settings.score_type == 'sqrt_cls_ctr':
            results.scores = results.scores.sqrt()
        return results

    def _select_by_cls_ctr(self, cls_scores, bbox_preds, score_factors,
                           param_preds, mlvl_points, mlvl_strides,
                           settings: BoxInferenceSettings,
                           batch_img_metas: Optional[List[dict]] = None
                           ) -> InstanceList:
        """AdelaiDet ``FCOSOutputs.forward_for_single_feature_map`` and
        ``select_over_all_levels`` for a batch: candidates σ(cls) σ(ctr) >
        score_thr ('adelaidet') or σ(cls) > score_thr ('fcos_repo'), the
        top ``nms_pre`` per level and image by σ(cls) σ(ctr) (one ``topk``
        per level for all images), 'fcos_repo' boxes clipped to
        [0, w - 1] x [0, h - 1] of ``img_shape``, then per image
        class-wise NMS and the top ``max_per_img``."""
        nms_pre, score_thr = settings.nms_pre, settings.score_thr
        rule = settings.candidate_rule
        num_imgs = cls_scores[0].size(0)
        keys = ('scores', 'labels', 'points', 'strides', 'bboxes',
                'param_preds', 'valid')
        levels = {k: [] for k in keys}

        def flat(t):  # (B, C, H, W) -> (B, HW, C)
            return t.permute(0, 2, 3, 1).reshape(num_imgs, -1, t.size(1))

        for cls_score, bbox_pred, ctr, param_pred, points, strides in zip(
                cls_scores, bbox_preds, score_factors, param_preds,
                mlvl_points, mlvl_strides):
            cls = flat(cls_score).sigmoid()
            scores = (cls * flat(ctr).sigmoid()).reshape(num_imgs, -1)
            # the top nms_pre candidates, or all of them when fewer: one
            # topk for the batch, non-candidates below every candidate
            candidates = (scores if rule == 'adelaidet' else
                          cls.reshape(num_imgs, -1)) > score_thr
            k = int(candidates.sum(dim=1).max()) if num_imgs else 0
            if 0 <= nms_pre < k:
                k = nms_pre
            scores, inds = torch.where(
                candidates, scores, scores.new_tensor(-1.)).topk(
                    k, dim=1, sorted=False)
            locs = inds // self.cls_out_channels

            def at_locs(t):
                t = flat(t)
                return t.gather(1, locs[..., None].expand(-1, -1, t.size(2)))

            levels['scores'].append(scores)
            levels['labels'].append(inds % self.cls_out_channels)
            levels['points'].append(points[locs])
            levels['strides'].append(strides[locs])
            levels['bboxes'].append(distance2bbox(points[locs],
                                                  at_locs(bbox_pred)))
            levels['param_preds'].append(at_locs(param_pred))
            levels['valid'].append(candidates.gather(1, inds))
        batch = {k: torch.cat(v, dim=1) for k, v in levels.items()}
        results_list = []
        for img_id in range(num_imgs):
            valid = batch['valid'][img_id]
            results = InstanceData(**{k: batch[k][img_id][valid]
                                      for k in keys[:-1]})
            if rule == 'fcos_repo':
                img_h, img_w = batch_img_metas[img_id]['img_shape'][:2]
                boxes = results.bboxes
                boxes[:, 0::2] = boxes[:, 0::2].clamp(0, img_w - 1)
                boxes[:, 1::2] = boxes[:, 1::2].clamp(0, img_h - 1)
            if settings.min_bbox_size >= 0:
                w = results.bboxes[:, 2] - results.bboxes[:, 0]
                h = results.bboxes[:, 3] - results.bboxes[:, 1]
                results = results[(w > settings.min_bbox_size) &
                                  (h > settings.min_bbox_size)]
            if len(results):
                _, keep = batched_nms(results.bboxes, results.scores,
                                      results.labels, settings.nms)
                results = results[keep[:settings.max_per_img]]
            results_list.append(results)
        return results_list
