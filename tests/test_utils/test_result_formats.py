"""Result formats (embedmask_mmdet/utils/result_formats.py): RLE and polygon
masks round trip through pycocotools, and our COCO results files are
CocoMetric's: the same entries, and the same bbox / segm AP from
``COCO.loadRes`` + ``COCOeval`` as CocoMetric reports on the same
predictions, against a generated COCO ground truth with non-contiguous
category ids."""
import copy
import json
import os.path as osp

import cv2
import numpy as np
import pytest
import torch
from mmdet.evaluation import CocoMetric
from mmdet.structures.mask import encode_mask_results
from mmengine.structures import InstanceData
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from embedmask_mmdet.datasets import generate_synthetic_coco
from embedmask_mmdet.datasets.synthetic_coco import SYNTHETIC_CLASSES
from embedmask_mmdet.utils import (check_mask_format, dump_coco_results,
                                   image_result, instances_to_coco_results,
                                   instances_to_records, mask_to_polygons,
                                   mask_to_rle, segmentation_to_mask)

H, W = 64, 80


def disc(cx, cy, r, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def l_shape():
    m = np.zeros((H, W), bool)
    m[10:50, 10:22] = True
    m[38:50, 10:60] = True
    return m


def iou(a, b):
    union = (a | b).sum()
    return 1. if union == 0 else (a & b).sum() / union


# ------------------------------------------------------------ masks


@pytest.mark.parametrize('as_tensor', [False, True])
def test_rle_round_trip(as_tensor):
    rng = np.random.default_rng(0)
    masks = [disc(40, 32, 10), l_shape(), np.zeros((H, W), bool),
             np.ones((H, W), bool), rng.random((H, W)) < 0.3]
    for mask in masks:
        rle = mask_to_rle(torch.from_numpy(mask) if as_tensor else mask)
        assert isinstance(rle['counts'], str) and rle['size'] == [H, W]
        json.dumps(rle)
        assert np.array_equal(segmentation_to_mask(rle, H, W), mask)
        # the same counts as mmdet's encoder (CocoMetric, DetInferencer)
        (ref, ) = encode_mask_results(mask[None])
        assert ref['counts'].decode() == rle['counts']


def test_polygons_rasterise_back_to_the_mask():
    shapes = dict(disc=disc(40, 32, 10), small_disc=disc(20, 20, 3),
                  big_disc=disc(40, 32, 25), l_shape=l_shape(),
                  touching_border=np.pad(np.ones((20, 20), bool),
                                         ((0, H - 20), (W - 20, 0))))
    for name, mask in shapes.items():
        polygons, dropped = mask_to_polygons(mask)
        assert dropped == 0 and len(polygons) == 1, name
        assert all(len(p) % 2 == 0 and len(p) >= 6 for p in polygons)
        back = segmentation_to_mask(polygons, H, W)
        assert iou(back, mask) >= 0.9, name  # the required floor
        assert np.array_equal(back, mask), name  # pixel edges: exact


def test_polygon_parts_small_parts_holes_and_empty():
    # two separate parts, a single pixel and a 1-px line: all kept
    mask = disc(20, 20, 6) | disc(60, 40, 8)
    mask[2, 70] = True
    mask[60, 5:40] = True
    polygons, dropped = mask_to_polygons(mask)
    assert len(polygons) == 4 and dropped == 0
    assert np.array_equal(segmentation_to_mask(polygons, H, W), mask)
    # diagonal neighbours only: one polygon through the shared corner
    diag = np.zeros((H, W), bool)
    diag[np.arange(10, 20), np.arange(10, 20)] = True
    polygons, _ = mask_to_polygons(diag)
    assert np.array_equal(segmentation_to_mask(polygons, H, W), diag)
    # a ring comes back filled (COCO polygons hold no holes)
    ring = disc(40, 32, 20) & ~disc(40, 32, 10)
    polygons, dropped = mask_to_polygons(ring)
    assert len(polygons) == 1 and dropped == 0
    assert np.array_equal(segmentation_to_mask(polygons, H, W),
                          disc(40, 32, 20))
    # empty
    empty = np.zeros((H, W), bool)
    assert mask_to_polygons(empty) == ([], 0)
    assert not segmentation_to_mask([], H, W).any()
    assert not segmentation_to_mask(mask_to_rle(empty), H, W).any()


def test_unknown_format_names_the_option_and_the_choices():
    with pytest.raises(ValueError) as e:
        check_mask_format('bitmap', option='--json',
                          choices=('none', 'rle', 'polygon'))
    assert "--json='bitmap'" in str(e.value)
    assert "'none', 'rle', 'polygon'" in str(e.value)
    with pytest.raises(ValueError, match="mask_format='poly'.*'rle', "
                       "'polygon'"):
        instances_to_records(InstanceData(
            bboxes=torch.zeros(0, 4), scores=torch.zeros(0),
            labels=torch.zeros(0, dtype=torch.long)), mask_format='poly')


def test_records_per_image():
    masks = np.stack([disc(20, 20, 6), l_shape(), np.zeros((H, W), bool)])
    pred = InstanceData(
        bboxes=torch.tensor([[14., 14., 27., 27.], [10., 10., 60., 50.],
                             [1., 2., 3., 4.]]),
        scores=torch.tensor([0.9, 0.5, 0.2]),
        labels=torch.tensor([2, 0, 1]),
        masks=torch.from_numpy(masks))
    records, dropped = instances_to_records(
        pred, 'polygon', score_thr=0.3, cat_ids=[5, 9, 12],
        classes=['a', 'b', 'c'])
    assert dropped == 0 and len(records) == 2
    r = records[0]
    assert r['bbox'] == [14., 14., 13., 13.] and r['label'] == 2
    assert r['category_id'] == 12 and r['class'] == 'c'
    assert r['score'] == pytest.approx(0.9)
    assert np.array_equal(segmentation_to_mask(r['segmentation'], H, W),
                          masks[0])
    records, _ = instances_to_records(pred, 'rle')  # all, no ids
    assert len(records) == 3 and 'category_id' not in records[0]
    for rec, mask in zip(records, masks):
        assert np.array_equal(segmentation_to_mask(rec['segmentation'], H, W),
                              mask)
    doc = image_result(pred, 'rle', 0.3, image='x.jpg')
    assert doc['image'] == 'x.jpg' and (doc['height'], doc['width']) == (H, W)
    assert len(doc['instances']) == 2 and doc['dropped_contours'] == 0
    json.loads(json.dumps(doc))
    # no masks: boxes only; a label without a category id is named
    boxes = InstanceData(bboxes=pred.bboxes, scores=pred.scores,
                         labels=pred.labels)
    assert 'segmentation' not in instances_to_records(boxes)[0][0]
    with pytest.raises(ValueError, match='label 2 has no category id'):
        instances_to_records(boxes, cat_ids=[1, 2])


# ------------------------------------------- COCO results vs CocoMetric

# non-contiguous, unordered category ids: a label index is not a category
# id (mmdet's datasets and CocoMetric map label i to the i-th id of the
# file's categories named in the classes, in file order)
CAT_IDS = [17, 3, 40, 8, 23, 91]


@pytest.fixture(scope='module')
def coco_gt(tmp_path_factory):
    """A generated val set (8 images, 96x112) whose categories are renumbered
    to CAT_IDS."""
    base = tmp_path_factory.mktemp('formats')
    generate_synthetic_coco(str(base), num_train=0, num_val=8, seed=7,
                            size=(112, 96), logger='silent')
    path = osp.join(base, 'annotations', 'instances_val.json')
    with open(path) as f:
        gt = json.load(f)
    renumber = {c['id']: CAT_IDS[i] for i, c in enumerate(gt['categories'])}
    for c in gt['categories']:
        c['id'] = renumber[c['id']]
    for a in gt['annotations']:
        a['category_id'] = renumber[a['category_id']]
    out = osp.join(base, 'gt.json')
    with open(out, 'w') as f:
        json.dump(gt, f)
    return dict(base=base, ann_file=out, coco=COCO(out))


def perturbed_predictions(coco: COCO, seed: int = 0):
    """Per image: the gt masks eroded / shifted / kept, some missed, some
    with the wrong class, plus false positives; random scores."""
    rng = np.random.default_rng(seed)
    label_of = {c: i for i, c in enumerate(CAT_IDS)}
    samples = []
    for img_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(img_id)[0]
        h, w = info['height'], info['width']
        masks, labels, scores = [], [], []
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=img_id)):
            if rng.random() < 0.15:
                continue  # missed
            m = coco.annToMask(ann).astype(np.uint8)
            kind = rng.integers(3)
            if kind == 0:
                m = cv2.erode(m, np.ones((3, 3), np.uint8))
            elif kind == 1:
                m = np.roll(m, tuple(rng.integers(-3, 4, 2)), axis=(0, 1))
            label = label_of[ann['category_id']]
            if rng.random() < 0.1:
                label = int(rng.integers(len(CAT_IDS)))
            masks.append(m.astype(bool))
            labels.append(label)
            scores.append(rng.uniform(0.3, 1.0))
        for _ in range(int(rng.integers(0, 3))):  # false positives
            m = np.zeros((h, w), np.uint8)
            cv2.circle(m, (int(rng.integers(w)), int(rng.integers(h))),
                       int(rng.integers(3, 12)), 1, -1)
            masks.append(m.astype(bool))
            labels.append(int(rng.integers(len(CAT_IDS))))
            scores.append(rng.uniform(0.05, 0.8))
        masks.append(np.zeros((h, w), bool))  # an empty mask too
        labels.append(0)
        scores.append(0.01)
        boxes = []
        for m in masks:
            ys, xs = np.nonzero(m)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] \
                if len(xs) else [0, 0, 1, 1]
            boxes.append(np.asarray(box, np.float32) + rng.uniform(
                -1, 1, 4).astype(np.float32))
        pred = InstanceData(
            bboxes=torch.from_numpy(np.stack(boxes)),
            scores=torch.tensor(scores, dtype=torch.float32),
            labels=torch.tensor(labels, dtype=torch.long),
            masks=torch.from_numpy(np.stack(masks)))
        samples.append(dict(img_id=img_id, ori_shape=(h, w),
                            pred_instances=pred))
    return samples


def coco_metric(ann_file, prefix, format_only=False):
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'],
                        format_only=format_only, outfile_prefix=prefix)
    metric.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
    return metric


def cocoeval_stats(coco, results, iou_type):
    """COCOeval as CocoMetric runs it (its maxDets; segm without 'bbox',
    so that areas are the masks')."""
    results = copy.deepcopy(results)
    if iou_type == 'segm':
        for r in results:
            r.pop('bbox')
    ev = COCOeval(coco, coco.loadRes(results), iou_type)
    ev.params.maxDets = [100, 300, 1000]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    return ev.stats


def test_coco_results_equal_cocometric(coco_gt, tmp_path):
    coco = coco_gt['coco']
    samples = perturbed_predictions(coco)
    n_dets = sum(len(s['pred_instances']) for s in samples)
    assert n_dets > 20

    metric = coco_metric(coco_gt['ann_file'], str(tmp_path / 'mm'))
    metric.process({}, copy.deepcopy(samples))
    mm = metric.evaluate(len(samples))

    cat_ids = coco.getCatIds(catNms=SYNTHETIC_CLASSES)  # CocoMetric's rule
    assert cat_ids == CAT_IDS
    files = dump_coco_results(
        ((s['img_id'], s['pred_instances']) for s in samples), cat_ids,
        str(tmp_path / 'ours'))
    assert files == dict(bbox=str(tmp_path / 'ours.bbox.json'),
                         segm=str(tmp_path / 'ours.segm.json'))
    for iou_type in ('bbox', 'segm'):
        with open(files[iou_type]) as f:
            ours = json.load(f)
        with open(tmp_path / f'mm.{iou_type}.json') as f:
            theirs = json.load(f)
        assert len(ours) == n_dets
        assert ours == theirs, iou_type  # entry for entry, same floats
        stats = cocoeval_stats(coco, ours, iou_type)
        ap = mm[f'coco/{iou_type}_mAP']
        # a non-trivial AP: perturbed, missed and false detections
        assert 0.1 < stats[0] < 0.95, (iou_type, stats[0])
        # CocoMetric reports 3 decimals
        assert abs(round(stats[0], 3) - ap) <= 1e-6, (iou_type, stats[0], ap)
        for i, key in enumerate(('mAP', 'mAP_50', 'mAP_75', 'mAP_s',
                                 'mAP_m', 'mAP_l')):
            assert abs(round(stats[i], 3) - mm[f'coco/{iou_type}_{key}']) \
                <= 1e-6, (iou_type, key)
        # and at full precision on CocoMetric's own file
        ref = cocoeval_stats(coco, theirs, iou_type)
        np.testing.assert_allclose(stats, ref, rtol=0, atol=1e-6)


def test_format_only_writes_the_same_files(coco_gt, tmp_path):
    """CocoMetric(format_only=True) (what onnx_test --format-only and
    tools/test.py's test_evaluator.format_only run) writes what
    dump_coco_results writes, and evaluates nothing."""
    coco = coco_gt['coco']
    samples = perturbed_predictions(coco, seed=1)
    metric = coco_metric(coco_gt['ann_file'], str(tmp_path / 'fo'),
                         format_only=True)
    metric.process({}, copy.deepcopy(samples))
    assert metric.evaluate(len(samples)) == {}
    dump_coco_results(((s['img_id'], s['pred_instances']) for s in samples),
                      CAT_IDS, str(tmp_path / 'ours'))
    for iou_type in ('bbox', 'segm'):
        with open(tmp_path / f'fo.{iou_type}.json') as f, \
                open(tmp_path / f'ours.{iou_type}.json') as g:
            assert json.load(f) == json.load(g)


def test_coco_entries_fields_and_mask_scores():
    mask = disc(20, 20, 5)
    pred = dict(bboxes=np.array([[15., 15., 26., 26.]], np.float32),
                scores=np.array([0.7], np.float32),
                labels=np.array([1]), masks=mask[None],
                mask_scores=np.array([0.4], np.float32))
    (bbox, ), (segm, ) = instances_to_coco_results(pred, 42, [7, 11])
    assert bbox == dict(image_id=42, bbox=[15., 15., 11., 11.],
                        score=pytest.approx(0.7), category_id=11)
    assert segm['score'] == pytest.approx(0.4) and segm['category_id'] == 11
    assert np.array_equal(segmentation_to_mask(segm['segmentation'], H, W),
                          mask)
    no_masks = {k: v for k, v in pred.items() if k != 'masks'}
    assert instances_to_coco_results(no_masks, 42, [7, 11])[1] == []
