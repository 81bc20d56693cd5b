"""Predictions as JSON: per-image records with RLE or polygon masks, and
COCO results-file entries.

The input is one image's ``pred_instances``, as ``DetInferencer``,
``inference_detector``, a model's ``test_step`` or ``EmbedMaskONNXModel``
return it: an mmengine ``InstanceData`` (or a dict) with ``bboxes`` (N, 4)
x1y1x2y2, ``scores`` (N,), ``labels`` (N,) and ``masks`` (N, H, W) bool,
as tensors or arrays.

- :func:`instances_to_records`: one record per detection, ``bbox`` as
  [x, y, w, h], ``score``, ``label`` (the class index), optionally
  ``category_id`` and ``class``, and ``segmentation`` as RLE (pycocotools'
  format, ``counts`` a str) or as polygons (flat [x1, y1, x2, y2, ...]
  lists).
- :func:`instances_to_coco_results` / :func:`dump_coco_results`: the
  entries of a COCO results file (``image_id``, ``category_id``, ``bbox``,
  ``score``, ``segmentation`` RLE), written as mmdet's
  ``CocoMetric.results2json`` writes them: what ``COCO.loadRes`` and the
  COCO test-dev server read.
- :func:`segmentation_to_mask`: either mask format back to an (H, W) bool
  array.
"""
import json
import os
import os.path as osp
from typing import Iterable, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

MASK_FORMATS = ('rle', 'polygon')


def check_mask_format(mask_format: str, option: str = 'mask_format',
                      choices: Sequence[str] = MASK_FORMATS) -> str:
    """``mask_format`` if it is one of ``choices``; else a ValueError that
    names the option (e.g. ``'--json'``) and the choices."""
    if mask_format not in choices:
        raise ValueError(f'{option}={mask_format!r}: unknown mask format; '
                         f'use one of {", ".join(map(repr, choices))}')
    return mask_format


def _numpy(value) -> np.ndarray:
    if hasattr(value, 'detach'):  # a torch tensor
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def xyxy_to_xywh(bbox) -> List[float]:
    """An (x1, y1, x2, y2) box as COCO's [x, y, w, h] list of floats,
    computed as ``CocoMetric.xyxy2xywh`` does (in Python floats from the
    box's own dtype)."""
    x1, y1, x2, y2 = _numpy(bbox).tolist()
    return [x1, y1, x2 - x1, y2 - y1]


def mask_to_rle(mask) -> dict:
    """An (H, W) binary mask as COCO RLE: ``{'size': [H, W], 'counts':
    str}`` (pycocotools' ``encode`` on the Fortran-ordered uint8 mask, the
    counts decoded to str so that the dict is JSON), the same as mmdet's
    ``encode_mask_results``."""
    mask = _numpy(mask)
    if mask.ndim != 2:
        raise ValueError(f'mask_to_rle: expected an (H, W) mask, got shape '
                         f'{mask.shape}')
    rle = mask_util.encode(
        np.asfortranarray(mask[:, :, None].astype(np.uint8)))[0]
    rle['counts'] = rle['counts'].decode()
    return rle


def mask_to_polygons(mask) -> Tuple[List[List[float]], int]:
    """The outer outlines of an (H, W) binary mask as COCO polygons.

    The outlines follow the pixel edges (COCO's continuous coordinates,
    pixel i covering [i, i + 1)), so pycocotools rasterises the polygons
    back to exactly the mask's pixels, holes aside: OpenCV's
    ``findContours`` (``RETR_EXTERNAL``, ``CHAIN_APPROX_SIMPLE``) runs on
    the mask upsampled x2 and dilated by one sub-pixel to the right and
    down, where its vertices (sub-pixel centres, halved) are the pixel
    corners. Contours through pixel centres, as ``findContours`` on the
    mask itself gives them, would lose half of every boundary pixel (a disc
    of radius 10 px rasterises back at IoU 0.91, a single pixel or a 1-px
    line not at all).

    - Holes are not represented (COCO polygons cannot hold them): a ring
      comes back filled. Use RLE where holes matter.
    - Parts touching only at a corner are one polygon through that corner.
    - A contour with fewer than 3 points would have no area and is dropped
      and counted; on this pixel-edge outline every part, a single pixel
      included, has at least 4, so the count is 0 for any mask.

    Returns:
        tuple: (polygons, dropped): a list of flat [x1, y1, x2, y2, ...]
        float lists, one per outer outline, and the number of contours
        dropped. An empty mask gives ([], 0).
    """
    mask = _numpy(mask).astype(bool)
    if mask.ndim != 2:
        raise ValueError(f'mask_to_polygons: expected an (H, W) mask, got '
                         f'shape {mask.shape}')
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if len(rows) == 0:
        return [], 0
    y0, x0 = rows[0], cols[0]
    crop = mask[y0:rows[-1] + 1, x0:cols[-1] + 1].astype(np.uint8)
    # pixel j covers sub-pixels 2j .. 2j + 2 (the x2 copy dilated by one)
    up = np.pad(crop.repeat(2, 0).repeat(2, 1), ((0, 1), (0, 1)))
    grid = up.copy()
    grid[1:] |= up[:-1]
    grid[:, 1:] |= up[:, :-1]
    grid[1:, 1:] |= up[:-1, :-1]
    contours, _ = cv2.findContours(grid, cv2.RETR_EXTERNAL,
                                   cv2.CHAIN_APPROX_SIMPLE)
    polygons, dropped = [], 0
    for contour in contours:
        if len(contour) < 3:
            dropped += 1
            continue
        points = contour.reshape(-1, 2) / 2. + (float(x0), float(y0))
        polygons.append(points.reshape(-1).tolist())
    return polygons, dropped


def segmentation_to_mask(segmentation, height: int,
                         width: int) -> np.ndarray:
    """A ``segmentation`` (RLE dict with str or bytes counts, or a list of
    flat polygons) rasterised by pycocotools to an (H, W) bool mask."""
    if isinstance(segmentation, dict):
        rle = dict(segmentation)
        if isinstance(rle['counts'], str):
            rle['counts'] = rle['counts'].encode()
    elif len(segmentation) == 0:
        return np.zeros((height, width), bool)
    else:
        rle = mask_util.merge(
            mask_util.frPyObjects(segmentation, height, width))
    return mask_util.decode(rle).astype(bool)


def _fields(pred_instances):
    get = pred_instances.get
    bboxes, scores, labels = (get('bboxes'), get('scores'), get('labels'))
    if bboxes is None or scores is None or labels is None:
        raise ValueError('pred_instances needs bboxes, scores and labels')
    masks = get('masks')
    mask_scores = get('mask_scores')
    return (_numpy(bboxes).reshape(-1, 4), _numpy(scores).reshape(-1),
            _numpy(labels).reshape(-1),
            None if masks is None else _numpy(masks),
            None if mask_scores is None else _numpy(mask_scores).reshape(-1))


def _category_id(cat_ids: Sequence[int], label: int) -> int:
    if not 0 <= label < len(cat_ids):
        raise ValueError(f'label {label} has no category id: cat_ids has '
                         f'{len(cat_ids)} entries')
    return int(cat_ids[label])


def instances_to_records(pred_instances, mask_format: str = 'rle',
                         score_thr: Optional[float] = None,
                         cat_ids: Optional[Sequence[int]] = None,
                         classes: Optional[Sequence[str]] = None
                         ) -> Tuple[List[dict], int]:
    """One image's detections as JSON records.

    Args:
        pred_instances: ``InstanceData`` or dict with ``bboxes``,
            ``scores``, ``labels`` and optionally ``masks``.
        mask_format (str): 'rle' or 'polygon' (see :func:`mask_to_rle`,
            :func:`mask_to_polygons`).
        score_thr (float, optional): Keep the detections scoring above
            this, as ``DetLocalVisualizer``'s ``pred_score_thr`` draws them
            (None: all).
        cat_ids (list[int], optional): The dataset's category ids by class
            index (``CocoMetric.cat_ids``); adds ``category_id``.
        classes (list[str], optional): Class names by index; adds
            ``class``.

    Returns:
        tuple: (records, dropped): the records in the input order
        (``bbox`` [x, y, w, h], ``score``, ``label``, ``category_id``,
        ``class``, ``segmentation`` where masks are given) and the number of
        polygon contours dropped for having < 3 points.
    """
    check_mask_format(mask_format)
    bboxes, scores, labels, masks, _ = _fields(pred_instances)
    records, dropped = [], 0
    for i in range(len(scores)):
        if score_thr is not None and not scores[i] > score_thr:
            continue
        label = int(labels[i])
        record = dict(bbox=xyxy_to_xywh(bboxes[i]), score=float(scores[i]),
                      label=label)
        if cat_ids is not None:
            record['category_id'] = _category_id(cat_ids, label)
        if classes is not None:
            record['class'] = classes[label]
        if masks is not None:
            if mask_format == 'rle':
                record['segmentation'] = mask_to_rle(masks[i])
            else:
                record['segmentation'], n = mask_to_polygons(masks[i])
                dropped += n
        records.append(record)
    return records, dropped


def image_result(pred_instances, mask_format: str = 'rle',
                 score_thr: Optional[float] = None,
                 cat_ids: Optional[Sequence[int]] = None,
                 classes: Optional[Sequence[str]] = None, **info) -> dict:
    """The JSON document the demos write per image (or per video frame):
    ``info`` (e.g. ``image=path``), ``height`` and ``width`` of the masks,
    ``mask_format``, ``score_thr``, ``instances`` (the records of
    :func:`instances_to_records`) and ``dropped_contours``."""
    records, dropped = instances_to_records(
        pred_instances, mask_format, score_thr, cat_ids, classes)
    doc = dict(info)
    masks = pred_instances.get('masks')
    if masks is not None:
        doc['height'], doc['width'] = (int(s) for s in masks.shape[-2:])
    doc.update(mask_format=mask_format, score_thr=score_thr,
               instances=records, dropped_contours=dropped)
    return doc


def instances_to_coco_results(pred_instances, image_id: int,
                              cat_ids: Sequence[int]
                              ) -> Tuple[List[dict], List[dict]]:
    """One image's detections as COCO results-file entries.

    As ``CocoMetric.results2json``: every detection (no threshold) gives a
    bbox entry ``{image_id, bbox: [x, y, w, h], score, category_id}`` and,
    with masks, a segm entry that also holds ``segmentation`` (RLE, counts
    a str) and scores by ``mask_scores`` where given.

    Args:
        pred_instances: As :func:`instances_to_records`.
        image_id (int): The image's id in the annotation file (a data
            sample's ``img_id``).
        cat_ids (list[int]): Category ids by class index: the annotation
            file's categories in the order of the dataset's classes
            (``COCO.get_cat_ids(cat_names=classes)``).

    Returns:
        tuple: (bbox entries, segm entries); segm entries are [] without
        masks.
    """
    bboxes, scores, labels, masks, mask_scores = _fields(pred_instances)
    if mask_scores is None:
        mask_scores = scores
    bbox_results, segm_results = [], []
    for i in range(len(labels)):
        entry = dict(image_id=image_id, bbox=xyxy_to_xywh(bboxes[i]),
                     score=float(scores[i]),
                     category_id=_category_id(cat_ids, int(labels[i])))
        bbox_results.append(entry)
        if masks is not None:
            segm_results.append(dict(
                entry, score=float(mask_scores[i]),
                segmentation=mask_to_rle(masks[i])))
    return bbox_results, segm_results


def dump_coco_results(results: Iterable[Tuple[int, object]],
                      cat_ids: Sequence[int], outfile_prefix: str) -> dict:
    """Write COCO results files for a set of images.

    Args:
        results: (image_id, pred_instances) pairs, e.g. ``(sample.img_id,
            sample.pred_instances)`` of each data sample.
        cat_ids (list[int]): As :func:`instances_to_coco_results`.
        outfile_prefix (str): Writes ``PREFIX.bbox.json`` and, when the
            predictions have masks, ``PREFIX.segm.json``: the names and
            contents of ``CocoMetric(format_only=True,
            outfile_prefix=PREFIX)``.

    Returns:
        dict: {'bbox': path, 'segm': path} of the files written.
    """
    bbox_all, segm_all, has_masks = [], [], False
    for image_id, pred_instances in results:
        bbox, segm = instances_to_coco_results(pred_instances, image_id,
                                               cat_ids)
        has_masks = has_masks or pred_instances.get('masks') is not None
        bbox_all += bbox
        segm_all += segm
    folder = osp.dirname(outfile_prefix)
    if folder:
        os.makedirs(folder, exist_ok=True)
    files = dict(bbox=f'{outfile_prefix}.bbox.json')
    if has_masks:
        files['segm'] = f'{outfile_prefix}.segm.json'
    for key, entries in (('bbox', bbox_all), ('segm', segm_all)):
        if key in files:
            with open(files[key], 'w') as f:
                json.dump(entries, f)
    return files
