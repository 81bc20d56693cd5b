"""The three ways sliced_eval.py runs a checkpoint on a large image:
plain predict, SAHI (its mmdet wrapper on our config) and
EmbedMaskSlicedInferencer. Each is a callable on a BGR array with a
``to_coco`` that turns its output into COCO results (bbox, segm).
"""
import copy
import hashlib
import time
from typing import Optional, Tuple

import numpy as np
from pycocotools import mask as mask_util

from embedmask_mmdet.utils.result_formats import (instances_to_coco_results,
                                                  xyxy_to_xywh)


class PlainPredictor:
    """The whole image through the config's test pipeline."""

    def __init__(self, config: str, checkpoint: str, device: str,
                 max_per_img: int):
        from mmdet.apis import init_detector
        from mmengine.config import Config
        cfg = Config.fromfile(config)
        cfg.model.test_cfg.max_per_img = max_per_img
        self.model = init_detector(cfg, checkpoint, device=device)

    def __call__(self, img_bgr: np.ndarray):
        from mmdet.apis import inference_detector
        return inference_detector(self.model, img_bgr)

    @staticmethod
    def to_coco(sample, image_id: int, cat_ids) -> Tuple[list, list]:
        return instances_to_coco_results(sample.pred_instances, image_id,
                                         cat_ids)


class SlicedPredictor(PlainPredictor):
    """``EmbedMaskSlicedInferencer`` (stitched pixel embeddings)."""

    def __init__(self, config: str, checkpoint: str, device: str,
                 slice_size: Tuple[int, int], overlap: float,
                 batch_size: int, max_per_img: int):
        from embedmask_mmdet.apis.sliced import EmbedMaskSlicedInferencer
        self.inferencer = EmbedMaskSlicedInferencer(
            config, checkpoint, slice_size=slice_size[::-1], overlap=overlap,
            batch_size=batch_size, device=device,
            cfg_options={'model.test_cfg.max_per_img': max_per_img})

    def __call__(self, img_bgr: np.ndarray):
        return self.inferencer(img_bgr)


def _drop_unrepresentable(pred: dict) -> None:
    """Drop, in place, the detections of one DetInferencer prediction dict
    whose non-empty mask SAHI cannot turn into a polygon."""
    from sahi.utils.cv import get_coco_segmentation_from_bool_mask
    keep = [i for i, m in enumerate(pred.get('masks', []))
            if not mask_util.area(m)
            or get_coco_segmentation_from_bool_mask(mask_util.decode(m))]
    if 'masks' in pred and len(keep) < len(pred['masks']):
        for k in ('bboxes', 'scores', 'labels', 'masks'):
            pred[k] = [pred[k][i] for i in keep]


class SahiPredictor:
    """SAHI's sliced prediction with its mmdet wrapper on our model.

    ``MmdetDetectionModel`` builds our config as it is (the config's
    ``custom_imports`` registers EmbedMask). The subclass below changes two
    things, neither in SAHI's merge:

    - it caches each tile's raw model output so that several merge settings
      run on one inference pass; the cached model time is added back to
      every setting's seconds per image;
    - it drops detections whose mask is not empty but has no outline of 3
      or more points (a 1-pixel sliver): SAHI 0.12.8 turns masks into
      polygons and raises "Invalid segmentation mask." on those, ending the
      whole image (it skips empty masks itself since sahi#390). The check's
      time is not counted.
    """

    def __init__(self, config: str, checkpoint: str, device: str,
                 slice_size: Tuple[int, int], overlap: float,
                 confidence: float, postprocess: str, metric: str,
                 shared: Optional['SahiPredictor'] = None):
        from sahi.models.mmdet import MmdetDetectionModel

        class CachedMmdetModel(MmdetDetectionModel):
            cache: dict = {}
            credit = [0.0]

            def perform_inference(self, image):
                arr = np.ascontiguousarray(image)
                key = (arr.shape, hashlib.blake2b(arr.data).digest())
                hit = self.cache.get(key)
                if hit is None:
                    start = time.perf_counter()
                    super().perform_inference(image)
                    spent = time.perf_counter() - start
                    start = time.perf_counter()
                    for pred in self._original_predictions:
                        _drop_unrepresentable(pred)
                    self.credit[0] -= time.perf_counter() - start
                    self.cache[key] = (copy.deepcopy(
                        self._original_predictions), spent)
                else:
                    self._original_predictions = copy.deepcopy(hit[0])
                    self.credit[0] += hit[1]

        if shared is not None:
            self.model = shared.model
            self.model.confidence_threshold = confidence
        else:
            self.model = CachedMmdetModel(
                model_path=checkpoint, config_path=config, device=device,
                confidence_threshold=confidence, load_at_init=True)
        self.confidence = confidence
        self.kwargs = dict(
            slice_height=slice_size[1], slice_width=slice_size[0],
            overlap_height_ratio=overlap, overlap_width_ratio=overlap,
            postprocess_type=postprocess, postprocess_match_metric=metric,
            postprocess_match_threshold=0.5, force_postprocess_type=True,
            verbose=0)

    def __call__(self, img_bgr: np.ndarray):
        from sahi.predict import get_sliced_prediction
        self.model.confidence_threshold = self.confidence
        # SAHI takes RGB arrays (its mmdet wrapper flips them back to BGR)
        return get_sliced_prediction(
            np.ascontiguousarray(img_bgr[:, :, ::-1]), self.model,
            confidence_threshold=self.confidence, **self.kwargs)

    def cached_seconds(self) -> float:
        return self.model.credit[0]

    @staticmethod
    def to_coco(result, image_id: int, cat_ids) -> Tuple[list, list]:
        h, w = result.image_height, result.image_width
        bbox, segm = [], []
        for op in result.object_prediction_list:
            entry = dict(image_id=image_id,
                         bbox=xyxy_to_xywh(op.bbox.to_xyxy()),
                         score=float(op.score.value),
                         category_id=int(cat_ids[op.category.id]))
            bbox.append(entry)
            polys = [p for p in (op.mask.segmentation if op.mask else [])
                     if len(p) >= 6]
            if polys:
                rle = mask_util.merge(mask_util.frPyObjects(polys, h, w))
            else:
                rle = mask_util.encode(np.zeros((h, w, 1), np.uint8,
                                                order='F'))[0]
            rle['counts'] = rle['counts'].decode()
            segm.append(dict(entry, segmentation=rle))
        return bbox, segm
