"""Bad input data: annotations, missing/corrupt/odd images, crowd RLEs, the corrupt-dataset tool (docs/robustness.md)."""
import json
import os
import os.path as osp
import shutil
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from pycocotools.coco import COCO

import embedmask_mmdet  # noqa: F401
from embedmask_mmdet.datasets import (SYNTHETIC_CLASSES, RobustLoadImageFromFile)
from embedmask_mmdet.datasets.transforms import jpeg_truncated

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")

from robustness_common import (  # noqa: E402
    CPU_CONFIG, ROOT, SIZE, dataset, first_polygon_ann, infos,
    load_json, write_json)


# ------------------------------------------------------- annotation checks
BAD_ANNOTATIONS = {
    'polygon < 3 points': ('segmentation', [[10, 10, 20, 20]]),
    'zero area': ('segmentation', [[10, 10, 20, 10, 30, 10]]),
    'self-intersecting polygon': ('segmentation',
                                  [[10, 10, 40, 10, 10, 40, 40, 40]]),
    'bbox outside the image': ('bbox', [200., 200., 10., 10.]),
    'negative bbox width/height': ('bbox', [10., 10., -5., 10.]),
    'unknown category_id': ('category_id', 99),
    'missing segmentation': ('segmentation', None),
    'malformed segmentation': ('segmentation',
                               dict(size=[5, 5], counts='PPYo0')),
    'image_id not in images': ('image_id', 999),
}


def bad_ann_file(synth, tmp_path, reason):
    coco = load_json(synth)
    ann = first_polygon_ann(coco)
    field, value = BAD_ANNOTATIONS[reason]
    ann[field] = value
    return write_json(coco, tmp_path / 'bad.json'), ann


@pytest.mark.parametrize('reason', list(BAD_ANNOTATIONS))
def test_bad_annotation_skipped_and_counted(synth, tmp_path, logs, reason):
    ann_file, ann = bad_ann_file(synth, tmp_path, reason)
    good = dataset(synth, osp.join(synth, 'annotations/instances_train.json'))
    extra = dict(self_intersecting='skip') if reason.startswith('self') \
        else {}
    ds = dataset(synth, ann_file, **extra)
    assert dict(ds.robust_stats['skipped']) == {reason: 1}
    assert ds.robust_stats['offending_ids'] == [ann['id']]
    n_good = sum(len(d['instances']) for d in infos(good))
    assert sum(len(d['instances']) for d in infos(ds)) == n_good - 1
    summary = [m for m in logs if 'skipped 1 annotations' in m]
    assert summary and ann_file in summary[0] and reason in summary[0]
    assert str(ann['id']) in summary[0]


@pytest.mark.parametrize('reason', list(BAD_ANNOTATIONS))
def test_bad_annotation_error_names_file_and_field(synth, tmp_path, reason):
    ann_file, ann = bad_ann_file(synth, tmp_path, reason)
    extra = dict(self_intersecting='error') if reason.startswith('self') \
        else dict(bad_annotation='error')
    with pytest.raises(ValueError) as exc:
        dataset(synth, ann_file, **extra)
    msg = str(exc.value)
    field = BAD_ANNOTATIONS[reason][0]
    assert ann_file in msg and f'annotation id {ann["id"]}' in msg
    assert f'field "{field}"' in msg and reason in msg and "'skip'" in msg


def test_self_intersecting_kept_by_default(synth, tmp_path):
    ann_file, _ = bad_ann_file(synth, tmp_path, 'self-intersecting polygon')
    ds = dataset(synth, ann_file)
    assert not ds.robust_stats['skipped']
    assert ds.robust_stats['fixed']['self-intersecting polygons kept'] == 1


def test_partly_outside_bbox_clipped_and_bad_parts_dropped(synth, tmp_path):
    coco = load_json(synth)
    ann = first_polygon_ann(coco)
    x, y, w, h = ann['bbox']
    ann['bbox'] = [x - 500, y, w + 500, h]
    ann['segmentation'].append([1, 1, 2, 2])
    ds = dataset(synth, write_json(coco, tmp_path / 'a.json'))
    fixed = ds.robust_stats['fixed']
    assert fixed['bboxes clipped to the image'] == 1
    assert fixed['polygon parts < 3 points dropped'] == 1
    info = next(d for d in infos(ds) if d['img_id'] == ann['image_id'])
    assert [0, y, x + w, y + h] in [i['bbox'] for i in info['instances']]


@pytest.mark.parametrize('policy', ['skip', 'error'])
def test_duplicate_annotation_ids_are_an_error(synth, tmp_path, policy):
    coco = load_json(synth)
    coco['annotations'][1]['id'] = coco['annotations'][0]['id']
    ann_file = write_json(coco, tmp_path / 'dup.json')
    with pytest.raises(ValueError, match='duplicate annotation ids') as exc:
        dataset(synth, ann_file, bad_annotation=policy)
    assert ann_file in str(exc.value)
    assert f'[{coco["annotations"][0]["id"]}]' in str(exc.value)


def test_bad_options_are_rejected(synth):
    with pytest.raises(ValueError, match="bad_annotation='maybe'.*'skip'"):
        dataset(synth, 'x.json', bad_annotation='maybe')
    with pytest.raises(ValueError, match="on_corrupt='ignore'"):
        RobustLoadImageFromFile(on_corrupt='ignore')


# ---------------------------------------------------------- missing images
def test_missing_image(synth, tmp_path, logs):
    root = str(tmp_path / 'data')
    shutil.copytree(synth, root)
    coco = load_json(root)
    gone = coco['images'][2]['file_name']
    os.remove(osp.join(root, 'train', gone))
    ann_file = osp.join(root, 'annotations/instances_train.json')
    ds = dataset(root, ann_file)
    assert len(ds) == len(coco['images']) - 1
    assert ds.robust_stats['missing_images'] == [
        osp.join(root, 'train', gone)]
    assert any('1 images whose file is missing' in m for m in logs)
    with pytest.raises(FileNotFoundError) as exc:
        dataset(root, ann_file, missing_image='error')
    assert gone in str(exc.value) and ann_file in str(exc.value)
    with pytest.raises(FileNotFoundError):  # test_mode defaults to 'error'
        dataset(root, ann_file, test_mode=True)


# --------------------------------------------------------- image decoding
def corrupt(path, kind):
    data = open(path, 'rb').read()
    if kind == 'truncated_jpeg':
        data = data[:len(data) * 6 // 10]
    elif kind == 'truncated_png':
        png = cv2.imencode('.png', cv2.imread(path))[1].tobytes()
        data = png[:len(png) * 6 // 10]
    elif kind == 'garbage':
        data = np.random.default_rng(0).bytes(len(data))
    elif kind == 'empty':
        data = b''
    elif kind == 'wrong_size':
        data = cv2.imencode('.jpg', np.zeros((SIZE, SIZE // 2, 3),
                                             np.uint8))[1].tobytes()
    with open(path, 'wb') as f:
        f.write(data)


CORRUPTIONS = ['truncated_jpeg', 'truncated_png', 'garbage', 'empty',
               'wrong_size']


@pytest.mark.parametrize('kind', CORRUPTIONS)
def test_corrupt_image_skip_or_error(synth, tmp_path, logs, kind):
    path = str(tmp_path / '000000.jpg')
    shutil.copy(osp.join(synth, 'train', '000000.jpg'), path)
    corrupt(path, kind)
    results = dict(img_path=path, height=SIZE, width=SIZE)
    skip = RobustLoadImageFromFile()
    assert skip(dict(results)) is None and skip.num_skipped == 1
    assert any(path in m and 'skipped' in m for m in logs)
    with pytest.raises(OSError) as exc:
        RobustLoadImageFromFile(on_corrupt='error')(dict(results))
    assert path in str(exc.value) and "on_corrupt='skip'" in str(exc.value)


def test_missing_file_in_transform(tmp_path):
    with pytest.raises(OSError, match='cannot be read'):
        RobustLoadImageFromFile(on_corrupt='error')(
            dict(img_path=str(tmp_path / 'nope.jpg')))


def test_truncated_jpeg_marker_check():
    ok = cv2.imencode('.jpg', np.zeros((16, 16, 3), np.uint8))[1].tobytes()
    assert not jpeg_truncated(ok)
    assert jpeg_truncated(ok[:-10])
    assert not jpeg_truncated(b'\x89PNG' + ok[4:-10])  # not a JPEG


def test_corrupt_training_image_is_refetched(synth, tmp_path, logs):
    root = str(tmp_path / 'data')
    shutil.copytree(synth, root)
    corrupt(osp.join(root, 'train', '000000.jpg'), 'truncated_jpeg')
    ds = dataset(root, osp.join(root, 'annotations/instances_train.json'),
                 pipeline=[dict(type='RobustLoadImageFromFile')])
    sample = ds[0]
    assert sample['img_path'] != osp.join(root, 'train', '000000.jpg')
    assert any('000000.jpg' in m for m in logs)
    test_ds = dataset(root, osp.join(root, 'annotations/instances_train.json'),
                      pipeline=[dict(type='RobustLoadImageFromFile')],
                      test_mode=True)
    with pytest.raises(RuntimeError, match='000000.jpg'):
        test_ds[0]


def test_gray_rgba_16bit_become_bgr_uint8(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    gray = bgr[..., 0].copy()
    cases = {
        'gray.png': (gray, np.repeat(gray[..., None], 3, 2)),
        'rgba.png': (np.dstack([bgr, np.full((20, 24), 9, np.uint8)]), bgr),
        'gray16.png': (gray.astype(np.uint16) * 257,
                       np.repeat(gray[..., None], 3, 2)),
        'bgr16.png': (bgr.astype(np.uint16) * 257, bgr),
        'rgba16.png': (np.dstack([bgr.astype(np.uint16) * 257,
                                  np.full((20, 24), 9, np.uint16)]), bgr),
        # 16-bit values that are not multiples of 257 are rounded
        'odd16.png': (np.full((20, 24), 1000, np.uint16),
                      np.full((20, 24, 3), 4, np.uint8)),
    }
    load = RobustLoadImageFromFile(on_corrupt='error')
    for name, (pixels, expected) in cases.items():
        path = str(tmp_path / name)
        assert cv2.imwrite(path, pixels)
        out = load(dict(img_path=path, height=20, width=24))['img']
        assert out.dtype == np.uint8 and out.shape == (20, 24, 3), name
        np.testing.assert_array_equal(out, expected, err_msg=name)
    cv2.imwrite(str(tmp_path / 'gray.jpg'), gray)
    out = load(dict(img_path=str(tmp_path / 'gray.jpg')))['img']
    assert out.shape == (20, 24, 3)
    assert (out[..., 0] == out[..., 1]).all()
    assert np.abs(out[..., 0].astype(int) - gray).mean() < 8


# ------------------------------------------------------------- crowd / RLE
def crowd_rle(h, w, box):
    m = np.zeros((h, w), np.uint8)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = 1
    # uncompressed RLE (counts list, column-major), as COCO stores crowds
    counts, flat, prev, run = [], m.flatten(order='F'), 0, 0
    for v in flat:
        if v != prev:
            counts.append(run)
            prev, run = v, 0
        run += 1
    counts.append(run)
    return dict(size=[h, w], counts=counts), int(m.sum())


def add_crowd(coco, img):
    rle, area = crowd_rle(img['height'], img['width'], (0, 0, 30, 20))
    coco['annotations'].append(dict(
        id=10**6, image_id=img['id'], category_id=1, iscrowd=1,
        segmentation=rle, area=area, bbox=[0., 0., 30., 20.]))


def test_crowd_goes_to_ignored_instances(synth, tmp_path):
    coco = load_json(synth)
    img = coco['images'][0]
    n = sum(a['image_id'] == img['id'] for a in coco['annotations'])
    add_crowd(coco, img)
    cfg = Config.fromfile(CPU_CONFIG)
    ds = dataset(synth, write_json(coco, tmp_path / 'crowd.json'),
                 pipeline=cfg.train_pipeline)
    assert ds.robust_stats['crowd'] == 1
    sample = ds[[d['img_id'] for d in infos(ds)].index(img['id'])]
    assert len(sample['data_samples'].gt_instances) == n
    assert len(sample['data_samples'].ignored_instances) == 1


def test_coco_metric_with_crowd_ground_truth(synth, tmp_path):
    from mmdet.evaluation import CocoMetric
    coco = load_json(synth, 'val')
    img = coco['images'][0]
    add_crowd(coco, img)
    ann_file = write_json(coco, tmp_path / 'val_crowd.json')
    metric = CocoMetric(ann_file=ann_file, metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=SYNTHETIC_CLASSES)
    api = COCO(ann_file)
    samples = []
    for im in coco['images']:
        anns = [a for a in coco['annotations'] if a['image_id'] == im['id']]
        masks = [api.annToMask(a) for a in anns]
        boxes = [[x, y, x + w, y + h] for x, y, w, h in
                 (a['bbox'] for a in anns)]
        samples.append(dict(img_id=im['id'], ori_shape=(im['height'],
                                                        im['width']),
                            pred_instances=dict(
            bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            # the detection of the crowd region must not count as an FP
            scores=torch.ones(len(anns)),
            labels=torch.tensor([a['category_id'] - 1 for a in anns]),
            masks=torch.from_numpy(np.stack(masks).astype(bool)) if masks
            else torch.zeros((0, im['height'], im['width']), dtype=bool))))
    metric.process({}, samples)
    res = metric.evaluate(len(samples))
    assert res['coco/bbox_mAP'] == pytest.approx(1.0, abs=1e-6)
    assert res['coco/segm_mAP'] == pytest.approx(1.0, abs=1e-6)


# ------------------------------------------------- tools/corrupt_dataset.py
def test_corrupt_dataset_tool_counts_match(synth, tmp_path, logs):
    out = str(tmp_path / 'corrupt')
    proc = subprocess.run(
        [sys.executable, osp.join(ROOT, 'tools/corrupt_dataset.py'), '--src',
         synth, '--out', out, '--image-fraction', '0.5',
         '--polygon-fraction', '0.2', '--seed', '0'],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(osp.join(out, 'corruption.json')) as f:
        report = json.load(f)
    assert len(report['truncated_images']) == 3
    degenerate = report['degenerate_annotations']
    ds = dataset(out, osp.join(out, 'annotations/instances_train.json'),
                 pipeline=[dict(type='RobustLoadImageFromFile')])
    assert dict(ds.robust_stats['skipped']) == {
        k: len(v) for k, v in degenerate.items() if v}
    for i in range(len(ds)):
        assert osp.basename(ds[i]['img_path']) not in \
            report['truncated_images']
    assert ds.pipeline.transforms[0].num_skipped >= 3
