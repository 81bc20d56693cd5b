"""The large-image comparison (tools/analysis_tools/sliced_eval.py): the
generated set, the split-object counter and a smoke run of the script."""
import json
import os.path as osp

import numpy as np
import pytest
from pycocotools import mask as mask_util
from pycocotools.coco import COCO

from embedmask_mmdet.datasets.synthetic_coco import SYNTHETIC_CLASSES
from embedmask_mmdet.datasets.synthetic_large import (
    generate_large_synthetic_coco, inside_no_tile, render_large_image,
    tile_starts)


def _rle(mask):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    rle['counts'] = rle['counts'].decode()
    return rle


@pytest.mark.parametrize('length,tile,overlap', [
    (2112, 320, 0.2), (2048, 320, 0.2), (700, 320, 0.25), (320, 320, 0.2),
    (200, 320, 0.2), (1000, 256, 0.5)])
def test_tile_starts_match_sahi(length, tile, overlap):
    slicing = pytest.importorskip('sahi.slicing')
    boxes = slicing.get_slice_bboxes(length, length, tile, tile,
                                     overlap_height_ratio=overlap,
                                     overlap_width_ratio=overlap)
    assert tile_starts(length, tile, overlap) == sorted({b[0] for b in boxes})


def test_inside_no_tile_brute_force():
    rng = np.random.default_rng(3)
    size, tile, overlap = (900, 700), (320, 256), 0.2
    xy = rng.uniform(0, 800, (300, 2))
    wh = rng.uniform(1, 150, (300, 2))
    boxes = np.concatenate([xy, wh], 1)
    got = inside_no_tile(boxes, size, tile, overlap)
    xs, ys = (tile_starts(size[0], tile[0], overlap),
              tile_starts(size[1], tile[1], overlap))
    for box, cut in zip(boxes, got):
        x, y, w, h = box
        whole = any(tx <= x and x + w <= tx + tile[0] and ty <= y
                    and y + h <= ty + tile[1] for tx in xs for ty in ys)
        assert cut == (not whole)
    assert 0 < got.sum() < len(got)


def test_large_image_masks_are_the_drawn_objects():
    drawn = render_large_image(np.random.default_rng(5), (832, 576))
    img, anns = drawn['img'], drawn['anns']
    bg = np.clip(np.rint(drawn['background']), 0, 255).astype(np.uint8)
    assert img.shape == (576, 832, 3) and img.dtype == np.uint8
    assert len(anns) >= 10
    masks = [mask_util.decode(a['segmentation']).astype(bool) for a in anns]
    union = np.zeros(img.shape[:2], np.int32)
    for a, m in zip(anns, masks):
        union += m
        assert a['area'] == m.sum() >= 20
        assert a['bbox'] == list(mask_util.toBbox(a['segmentation']))
        assert 1 <= a['category_id'] <= len(SYNTHETIC_CLASSES)
        # the object's pixels are painted (not background) ...
        assert (img[m] != bg[m]).any(1).mean() > 0.98
    # ... the visible masks do not overlap, and nothing else is painted
    assert union.max() == 1
    assert (img[union == 0] == bg[union == 0]).all()
    # objects straddle the overlap bands of the 320 / 0.2 tiling
    cut = inside_no_tile([a['bbox'] for a in anns], (832, 576), (320, 320),
                         0.2)
    assert cut.sum() >= 2


def test_generated_json_loads_and_is_deterministic(tmp_path):
    a, b = str(tmp_path / 'a'), str(tmp_path / 'b')
    stats = generate_large_synthetic_coco(a, 2, seed=1, size=(576, 576),
                                          logger=None)
    generate_large_synthetic_coco(b, 2, seed=1, size=(576, 576),
                                  logger=None)
    ann = osp.join('annotations', 'instances.json')
    with open(osp.join(a, ann), 'rb') as fa:
        with open(osp.join(b, ann), 'rb') as fb:
            assert fa.read() == fb.read()
    coco = COCO(osp.join(a, ann))
    assert len(coco.getImgIds()) == 2
    assert len(coco.getAnnIds()) == stats['instances'] > 0
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == \
        list(SYNTHETIC_CLASSES)
    import cv2
    for img_id in coco.getImgIds():
        info = coco.loadImgs(img_id)[0]
        img = cv2.imread(osp.join(a, 'images', info['file_name']))
        assert img.shape == (info['height'], info['width'], 3)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=[img_id])):
            m = coco.annToMask(ann)
            assert m.shape == img.shape[:2] and m.sum() == ann['area']


def _brute_force(gts, dets, scores, thr, inside, cover, pair_iou):
    """The definition pixel by pixel: pieces per object, and split."""
    pieces, split = [], []
    for g in gts:
        mine = [d for d, s in zip(dets, scores)
                if s >= thr and d.sum() and (d & g).sum() >= inside * d.sum()
                and (d & g).sum() >= cover * g.sum()]
        pieces.append(len(mine))
        split.append(any((a & b).sum() < pair_iou * (a | b).sum()
                         for i, a in enumerate(mine) for b in mine[i + 1:]))
    return pieces, split


def test_split_counter_on_constructed_detections():
    from analysis_tools.sliced_eval import object_detections

    def square(x, y, w, h):
        m = np.zeros((200, 200), bool)
        m[y:y + h, x:x + w] = True
        return m

    gts = [square(10, 10, 40, 40), square(100, 10, 40, 40),
           square(10, 100, 40, 40), square(100, 100, 40, 40),
           square(150, 150, 40, 40)]
    dets, scores = [], []

    def det(m, s):
        dets.append(m)
        scores.append(s)

    # A: cut into two halves by a tile border -> split
    det(square(10, 10, 20, 40), 0.9)
    det(square(30, 10, 20, 40), 0.8)
    # B: one whole detection and a sliver (2.5 % of B): not a piece
    det(square(100, 10, 40, 40), 0.9)
    det(square(100, 10, 40, 1), 0.9)
    # C: two halves, one below the score threshold
    det(square(10, 100, 20, 40), 0.9)
    det(square(30, 100, 20, 40), 0.2)
    # D: a whole detection, and one mostly outside D (D is 1/4 of it)
    det(square(100, 100, 40, 40), 0.9)
    det(square(100, 100, 80, 80), 0.9)
    # E: two overlapping pieces (IoU 0.6): duplicates, not split
    det(square(150, 150, 40, 32), 0.9)
    det(square(150, 158, 40, 32), 0.9)
    got = object_detections([_rle(g) for g in gts],
                            [_rle(d) for d in dets], scores, 0.3)
    assert got['pieces'].tolist() == [2, 1, 1, 1, 2]
    assert got['split'].tolist() == [True, False, False, False, False]
    # duplicates of one whole object are > 1 detection, not split; an
    # empty mask is never a piece
    dup = object_detections([_rle(gts[0])],
                            [_rle(gts[0]), _rle(gts[0]),
                             _rle(np.zeros((200, 200), bool))],
                            [0.9, 0.5, 0.9], 0.3)
    assert dup['pieces'].tolist() == [2] and not dup['split'].any()
    # random masks against the definition computed pixel by pixel (more
    # than 255 masks: pycocotools' area() alone refuses them)
    rng = np.random.default_rng(0)
    rand_d = [square(*rng.integers(0, 160, 2), *rng.integers(5, 60, 2))
              for _ in range(300)]
    rand_s = rng.uniform(0, 1, 300).tolist()
    got = object_detections([_rle(g) for g in gts],
                            [_rle(d) for d in rand_d], rand_s, 0.3)
    pieces, split = _brute_force(gts, rand_d, rand_s, 0.3, 0.5, 0.1, 0.5)
    assert got['pieces'].tolist() == pieces and got['split'].tolist() == split
    assert sum(split) > 0 and max(pieces) >= 2


@pytest.mark.slow
def test_sliced_eval_smoke(tmp_path):
    """run() and render() end to end on one small image, with an untrained
    Lite0 model (backbone from its package, heads at their init)."""
    import torch
    from mmdet.registry import MODELS
    from mmengine.config import Config

    from analysis_tools import sliced_eval
    pytest.importorskip('sahi')
    cfg = Config.fromfile(sliced_eval.DEFAULT_CONFIG)
    model = MODELS.build(cfg.model)
    model.init_weights()
    ckpt = str(tmp_path / 'untrained.pth')
    torch.save(dict(state_dict=model.state_dict(),
                    meta=dict(dataset_meta=dict(classes=SYNTHETIC_CLASSES))),
               ckpt)
    methods = ['plain', 'sahi']
    try:
        import embedmask_mmdet.apis.sliced  # noqa: F401
        methods.append('sliced')
    except ImportError:
        pass
    result = sliced_eval.run(sliced_eval.DEFAULT_CONFIG, ckpt,
                             data_dir=str(tmp_path / 'data'), num_images=1,
                             size=(576, 576), methods=methods)
    names = [r['method'] for r in result['rows']]
    assert names[:4] == ['plain', 'SAHI GREEDYNMM/IOS', 'SAHI NMS/IOU',
                         'SAHI GREEDYNMM/IOS conf 0.3']
    assert len(names) == len(methods) + 2
    for r in result['rows']:
        for key in ('segm_AP', 'segm_AP_s', 'bbox_AP'):
            assert 0.0 <= r[key] <= 1.0
        assert r['seconds_per_image'] > 0
        assert 0 <= r['split_objects'] <= r['multi_detected_objects']
        assert 0 <= r['split_inside_no_tile'] <= r['split_objects']
    assert result['data']['images'] == 1
    assert result['data']['instances'] > 0
    json.dumps(result)
    text = sliced_eval.render(result)
    assert text.count('\n| ') == len(names) + 1
    assert '| split objects (of them inside no tile) |' in text
    assert 'Pieces, > 1 detection, split' in text


def test_sahi_unrepresentable_masks_dropped():
    """SAHI 0.12.8 raises on a non-empty mask with no outline of >= 3
    points; the wrapper drops exactly those (empty masks SAHI skips)."""
    pytest.importorskip('sahi')
    from analysis_tools.sliced_eval_methods import _drop_unrepresentable
    from sahi.prediction import ObjectPrediction
    from sahi.utils.cv import get_coco_segmentation_from_bool_mask
    square, line, empty = (np.zeros((40, 40), bool) for _ in range(3))
    square[5:15, 5:15] = True
    line[20, 5:30] = True
    with pytest.raises(ValueError, match='Invalid segmentation'):
        ObjectPrediction(bbox=[5, 20, 30, 21], category_id=0, score=0.9,
                         segmentation=get_coco_segmentation_from_bool_mask(
                             line), category_name='x', full_shape=[40, 40])
    pred = dict(labels=[0, 1, 2], scores=[0.9, 0.8, 0.7],
                bboxes=[[5, 5, 15, 15], [5, 20, 30, 21], [0, 0, 1, 1]],
                masks=[_rle(square), _rle(line), _rle(empty)])
    _drop_unrepresentable(pred)
    assert pred['labels'] == [0, 2] and pred['scores'] == [0.9, 0.7]
    assert len(pred['bboxes']) == len(pred['masks']) == 2
