"""Tests for the built-in synthetic COCO-format dataset."""
import hashlib
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

import embedmask_mmdet  # noqa: F401
from embedmask_mmdet.datasets import SYNTHETIC_CLASSES, generate_synthetic_coco

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(REPO, 'configs', '_base_', 'datasets',
                  'synthetic_instance.py')
SIZE = (320, 320)

# pycocotools' decode trips a numpy-2 copy-keyword deprecation on every call.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('synthetic'))
    stats = generate_synthetic_coco(out, 40, 12, seed=0, size=SIZE)
    assert stats['train']['images'] == 40 and stats['val']['images'] == 12
    return out


def _coco(root, split):
    return COCO(osp.join(root, 'annotations', f'instances_{split}.json'))


def _hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha256(
                    f.read()).hexdigest()
    return out


def test_deterministic(tmp_path):
    args = dict(num_train=6, num_val=3, size=(160, 128))
    generate_synthetic_coco(str(tmp_path / 'a'), seed=3, **args)
    generate_synthetic_coco(str(tmp_path / 'b'), seed=3, **args)
    generate_synthetic_coco(str(tmp_path / 'c'), seed=4, **args)
    a, b, c = (_hashes(str(tmp_path / n)) for n in 'abc')
    assert len(a) == 6 + 3 + 2
    assert a == b
    assert a.keys() == c.keys() and a != c
    # train and val come from different streams
    assert a['train/000000.jpg'] != a['val/000000.jpg']


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='num_train'):
        generate_synthetic_coco(str(tmp_path), -1, 2)
    with pytest.raises(ValueError, match='width'):
        generate_synthetic_coco(str(tmp_path), 1, 1, size=(8, 320))


@pytest.mark.parametrize('split', ['train', 'val'])
def test_annotations_valid(data_dir, split):
    coco = _coco(data_dir, split)
    cats = {c['id']: c for c in coco.dataset['categories']}
    assert [cats[i]['name'] for i in sorted(cats)] == list(SYNTHETIC_CLASSES)
    assert all(c['supercategory'] == 'shape' for c in cats.values())
    anns = coco.dataset['annotations']
    ids = [a['id'] for a in anns]
    assert len(set(ids)) == len(ids) and min(ids) == 1
    assert len({i['id'] for i in coco.dataset['images']}) == len(
        coco.dataset['images'])
    kinds = set()
    for ann in anns:
        img = coco.imgs[ann['image_id']]
        assert (img['width'], img['height']) == SIZE
        assert osp.isfile(osp.join(data_dir, split, img['file_name']))
        assert ann['category_id'] in cats and ann['iscrowd'] == 0
        mask = coco.annToMask(ann)
        assert mask.shape == (img['height'], img['width'])
        assert ann['area'] > 0 and ann['area'] == mask.sum()
        ref = mask_util.toBbox(mask_util.encode(np.asfortranarray(mask)))
        assert list(ann['bbox']) == ref.tolist()
        poly = isinstance(ann['segmentation'], list)
        kinds.add(poly)
        if cats[ann['category_id']]['name'] == 'ring':
            assert not poly, 'rings have holes, so must be RLE'
        if not poly:
            assert isinstance(ann['segmentation']['counts'], str)
    if split == 'train':
        assert kinds == {True, False}


def test_occluded_masks_disjoint(data_dir):
    coco = _coco(data_dir, 'train')
    for img_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        if not anns:
            continue
        total = sum(coco.annToMask(a).astype(np.int32) for a in anns)
        assert total.max() <= 1, f'overlapping masks in image {img_id}'


def test_content_statistics(data_dir):
    coco = _coco(data_dir, 'train')
    counts = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert 0 in counts
    assert max(counts) >= 10
    sides = [max(a['bbox'][2:]) for a in coco.dataset['annotations']]
    assert min(sides) < 16
    assert max(sides) > 0.5 * min(SIZE)
    assert len({a['category_id'] for a in coco.dataset['annotations']}) == \
        len(SYNTHETIC_CLASSES)


def _dataset(data_dir, which):
    from mmengine.config import Config
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    register_all_modules()
    cfg = Config.fromfile(CONFIG)
    assert tuple(cfg.metainfo['classes']) == SYNTHETIC_CLASSES
    ds_cfg = cfg[f'{which}_dataloader'].dataset
    split = 'train' if which == 'train' else 'val'
    ds_cfg.update(
        data_root=data_dir,
        ann_file=f'annotations/instances_{split}.json',
        data_prefix=dict(img=f'{split}/'))
    return DATASETS.build(ds_cfg)


def test_loads_through_mmdet(data_dir):
    from mmdet.structures.mask import BitmapMasks, PolygonMasks
    coco = _coco(data_dir, 'val')
    ds = _dataset(data_dir, 'val')
    assert len(ds) == len(coco.getImgIds())
    for i in range(len(ds)):
        sample = ds[i]
        ds_ = sample['data_samples']
        n = len(coco.getAnnIds(imgIds=ds_.img_id))
        gt = ds_.gt_instances
        assert len(gt) == n
        assert isinstance(gt.masks, (BitmapMasks, PolygonMasks))
        assert (gt.masks.height, gt.masks.width) == ds_.img_shape
        assert sample['inputs'].shape[1:] == ds_.img_shape
        if n and ds_.img_shape == ds_.ori_shape:
            # No rescale at this size, so mmdet's decoding must be exact.
            anns = coco.loadAnns(coco.getAnnIds(imgIds=ds_.img_id))
            ref = np.stack([coco.annToMask(a) for a in anns])
            np.testing.assert_array_equal(gt.masks.to_ndarray(), ref)
            ref_boxes = [[x, y, x + w, y + h]
                         for x, y, w, h in (a['bbox'] for a in anns)]
            np.testing.assert_allclose(gt.bboxes.numpy(), ref_boxes)

    train_coco = _coco(data_dir, 'train')
    train = _dataset(data_dir, 'train')
    non_empty = [i for i in train_coco.getImgIds()
                 if train_coco.getAnnIds(imgIds=i)]
    assert len(train) == len(non_empty)
    sample = train[0]
    assert len(sample['data_samples'].gt_instances) == len(
        train_coco.getAnnIds(imgIds=sample['data_samples'].img_id))


def test_coco_metric_perfect_on_ground_truth(data_dir):
    from mmdet.evaluation import CocoMetric
    ann_file = osp.join(data_dir, 'annotations', 'instances_val.json')
    coco = COCO(ann_file)
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
    samples = []
    for img_id in coco.getImgIds():
        info = coco.imgs[img_id]
        h, w = info['height'], info['width']
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
        boxes = [[x, y, x + bw, y + bh] for x, y, bw, bh in
                 (a['bbox'] for a in anns)]
        masks = np.stack([coco.annToMask(a) for a in anns]) if anns else \
            np.zeros((0, h, w), np.uint8)
        samples.append(dict(
            img_id=img_id,
            ori_shape=(h, w),
            pred_instances=dict(
                bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1,
                                                                        4),
                scores=torch.ones(len(anns)),
                labels=torch.tensor([a['category_id'] - 1 for a in anns],
                                    dtype=torch.long),
                masks=torch.from_numpy(masks.astype(bool)))))
    metric.process({}, samples)
    res = metric.evaluate(len(samples))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0, abs=1e-6)
    assert res['coco/segm_mAP'] == pytest.approx(1.0, abs=1e-6)


def test_annotation_json_is_canonical(data_dir):
    path = osp.join(data_dir, 'annotations', 'instances_val.json')
    with open(path) as f:
        text = f.read()
    assert text == json.dumps(json.loads(text), sort_keys=True,
                              separators=(',', ':'))
