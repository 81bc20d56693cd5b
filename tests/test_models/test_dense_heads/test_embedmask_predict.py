"""EmbedMask heads at test: detections, masks at the original size, options."""
import math

import pytest
import torch

import embedmask_mmdet  # noqa: F401  (registers the heads and the loss)
from heads_common import (  # noqa: E402
    ONE_GT, build_heads, make_sample, make_test_cfg, predict, pyramid,
    zero_embedding_convs)


# ------------------------------------------------------------------ predict
def disk_heads(design='default', radius=20.):
    """Zero embedding convs and a constant margin: the mask of a detection is
    the disk of ``radius`` input pixels around its FCOS point."""
    bbox_head, mask_head = build_heads(design)
    zero_embedding_convs(bbox_head, mask_head)
    with torch.no_grad():
        if design == 'v3':
            mask_head.coord_scale.fill_(1.)
        ctrl = bbox_head.embedding_head
        ctrl.margin_conv.weight.zero_()
        # exp(-s (r / 100)^2) = 0.5
        ctrl.margin_conv.bias.fill_(math.log(math.log(2.) * 1e4 / radius**2))
    return bbox_head, mask_head


@pytest.mark.parametrize('design', ['default', 'v3'])
def test_predict_masks_at_ori_shape_are_disks_around_points(design):
    radius = 20.
    bbox_head, mask_head = disk_heads(design, radius)
    sample = make_sample(ONE_GT, ori_shape=(64, 80), scale_factor=(2., 2.))
    before, results = predict(bbox_head, mask_head, pyramid(seed=8), [sample])
    res, det = results[0], before[0]
    assert len(res) == 20  # score_thr 0, max_per_img 20
    assert res.masks.dtype == torch.bool and res.masks.shape == (20, 64, 80)
    for key in ('bboxes', 'scores', 'labels', 'masks'):
        assert len(res.get(key)) == 20
    # boxes rescaled to ori_shape
    torch.testing.assert_close(res.bboxes, (det.bboxes / 2.).clamp(min=0))
    torch.testing.assert_close(res.scores, det.scores)
    # ori pixel (v, u) is input point ((u + .5) 2, (v + .5) 2)
    vs, us = torch.meshgrid(torch.arange(64.), torch.arange(80.),
                            indexing='ij')
    for k in range(len(res)):
        px, py = res.points[k].tolist()
        dist = ((us + .5) * 2 - px).hypot((vs + .5) * 2 - py)
        assert res.masks[k][dist < radius - 4].all(), k
        assert not res.masks[k][dist > radius + 4].any(), k


def test_predict_without_rescale_keeps_input_size():
    bbox_head, mask_head = disk_heads()
    sample = make_sample(ONE_GT, img_shape=(120, 150), ori_shape=(60, 75),
                         scale_factor=(2., 2.))
    before, results = predict(bbox_head, mask_head, pyramid(seed=8), [sample],
                              rescale=False)
    assert results[0].masks.shape == (20, 120, 150)
    torch.testing.assert_close(results[0].bboxes, before[0].bboxes)


@pytest.mark.parametrize('rescale', [True, False])
def test_predict_no_detection(rescale):
    bbox_head, mask_head = build_heads()
    sample = make_sample(ONE_GT, img_shape=(120, 150), ori_shape=(60, 75),
                         scale_factor=(2., 2.))
    cfg = make_test_cfg(score_thr=1.1)  # sigmoid scores never pass
    _, results = predict(bbox_head, mask_head, pyramid(seed=9), [sample],
                         rescale=rescale, cfg=cfg)
    res = results[0]
    assert len(res) == 0
    assert res.bboxes.shape == (0, 4) and res.scores.shape == (0, )
    assert res.labels.shape == (0, )
    assert res.masks.dtype == torch.bool
    assert res.masks.shape == ((0, 60, 75) if rescale else (0, 120, 150))


def test_predict_crop_to_box():
    bbox_head, mask_head = build_heads()
    with torch.no_grad():
        # a very wide margin: p > 0.5 on the whole image
        bbox_head.embedding_head.margin_conv.bias.fill_(-8.)
    sample = make_sample(ONE_GT, ori_shape=(64, 80), scale_factor=(2., 2.))
    x = pyramid(seed=10)
    _, full = predict(bbox_head, mask_head, x, [sample])
    cfg = make_test_cfg(crop_to_box=True, crop_padding=2)
    _, cropped = predict(bbox_head, mask_head, x, [sample], cfg=cfg)
    full, cropped = full[0], cropped[0]
    assert full.masks.all()
    torch.testing.assert_close(full.bboxes, cropped.bboxes)
    # padding: 2 cells of the mask out stride (4) of the input, in ori pixels
    pad = 2 * 4 * 0.5
    vs, us = torch.meshgrid(torch.arange(64.) + .5, torch.arange(80.) + .5,
                            indexing='ij')
    some_outside = False
    for k in range(len(cropped)):
        x1, y1, x2, y2 = cropped.bboxes[k].tolist()
        inside = (us >= x1 - pad) & (us <= x2 + pad) & \
            (vs >= y1 - pad) & (vs <= y2 + pad)
        assert torch.equal(cropped.masks[k], full.masks[k] & inside)
        some_outside |= bool((~inside).any())
    assert some_outside


def test_predict_mask_thr_is_monotonic():
    bbox_head, mask_head = build_heads(
        bbox_overrides=dict(prior_margin=0.5))  # p = 0.5 at 50 pixels
    sample = make_sample(ONE_GT)
    x = pyramid(seed=11)
    masks = []
    for thr in (0.2, 0.5, 0.8):
        _, results = predict(bbox_head, mask_head, x, [sample],
                             cfg=make_test_cfg(mask_thr=thr))
        masks.append(results[0].masks)
    assert masks[0].shape == masks[1].shape == masks[2].shape
    # higher threshold: subset, and strictly smaller somewhere
    for lo, hi in zip(masks[:-1], masks[1:]):
        assert not (hi & ~lo).any()
        assert (lo & ~hi).any()
    assert masks[2].any()


def test_predict_sqrt_score_type():
    bbox_head, mask_head = build_heads()
    sample = make_sample(ONE_GT)
    x = pyramid(seed=12)
    _, plain = predict(bbox_head, mask_head, x, [sample])
    _, sqrt = predict(bbox_head, mask_head, x, [sample],
                      cfg=make_test_cfg(score_type='sqrt_cls_ctr'))
    plain, sqrt = plain[0], sqrt[0]
    assert len(plain) == len(sqrt) > 0
    torch.testing.assert_close(sqrt.bboxes, plain.bboxes)
    torch.testing.assert_close(sqrt.scores, plain.scores.sqrt())
    assert torch.equal(sqrt.masks, plain.masks)
    # cls_ctr is cls x centerness: below the raw top class probability
    assert (plain.scores < sqrt.scores).all()


def test_predict_batch_uses_each_image_meta():
    """Two images of different img_shape/ori_shape in one batch: each gets
    masks at its own ori_shape, equal to predicting it alone."""
    bbox_head, mask_head = disk_heads()
    x = pyramid(batch=2, seed=13)
    samples = [make_sample(ONE_GT, img_shape=(120, 150), ori_shape=(60, 75),
                           scale_factor=(2., 2.)),
               make_sample(ONE_GT)]
    _, batch = predict(bbox_head, mask_head, x, samples)
    for img in range(2):
        alone_x = tuple(f[img:img + 1] for f in x)
        _, alone = predict(bbox_head, mask_head, alone_x, [samples[img]])
        a, b = alone[0], batch[img]
        ori = samples[img].metainfo['ori_shape']
        assert b.masks.shape == (len(b), *ori)
        assert len(a) == len(b) > 0
        torch.testing.assert_close(a.bboxes, b.bboxes)
        assert torch.equal(a.masks, b.masks)
        assert (b.bboxes[:, 0::2] <= ori[1]).all()
        assert (b.bboxes[:, 1::2] <= ori[0]).all()


@pytest.mark.parametrize('design', ['default', 'v3'])
def test_predict_unpadded_side_with_rounding_prone_scale(design):
    """img_h = 224 = 7 x 32 (no padding) shown at ori_h = 61: 28 cells x
    (8 x 61 / 224) is 60.999... in floating point; masks must still be
    (N, 61, 44), as for COCO's 427-pixel images tested at 800."""
    bbox_head, mask_head = disk_heads(design)
    sample = make_sample(ONE_GT, img_shape=(224, 160), ori_shape=(61, 44),
                         scale_factor=(160 / 44, 224 / 61),
                         pad_shape=(224, 160))
    _, results = predict(bbox_head, mask_head, pyramid(seed=14, h=224, w=160),
                         [sample])
    assert results[0].masks.shape == (20, 61, 44)


# ------------------------------------------------------------ batched predict
BATCH_CASES = {
    # (mask head overrides, test cfg overrides)
    'adelaidet-selection-embedding': (
        {}, dict(thresh_with_ctr=True, mask_resample='embedding')),
    'adelaidet-placement': (
        dict(alignment='adelaidet'),
        dict(thresh_with_ctr=True, score_type='sqrt_cls_ctr', nms_pre=50)),
    'mmdet-selection-prob-crop': (
        {}, dict(thresh_with_ctr=False, crop_to_box=True)),
}


@pytest.mark.parametrize('case', list(BATCH_CASES))
def test_batched_predict_equals_one_image_at_a_time(case):
    """Both heads' predict_by_feat on the outputs for a batch of 4 (two
    output geometries, one image without detections) gives what they give
    on each image's slice of the same outputs: the same detections, the
    same masks (a vectorised exp/sigmoid may round a batch's tail
    differently by an ulp, hence the tolerances)."""
    mask_overrides, cfg_overrides = BATCH_CASES[case]
    torch.manual_seed(1)  # the weights, whatever ran before
    bbox_head, mask_head = build_heads(mask_overrides=mask_overrides)
    with torch.no_grad():
        # margins making p = 0.5 about 20 px away, embeddings varied
        bbox_head.embedding_head.margin_conv.bias.fill_(
            math.log(math.log(2.) * 1e4 / 20.**2))
        # (the branch's kaiming-uniform convs already spread the features:
        # masks of varied size need a smaller prediction conv, not a larger)
        mask_head.pixel_branch.conv_pred.weight.mul_(0.1)
        # scores far from the prior where features are, the prior (0.01)
        # where they are zero
        bbox_head.conv_cls.weight.mul_(10.)
    cfg = make_test_cfg(**cfg_overrides, score_thr=0.01)
    for head in (bbox_head, mask_head):
        head.test_cfg = cfg
        head.eval()
    samples = [make_sample(ONE_GT),
               make_sample(ONE_GT, img_shape=(120, 150), ori_shape=(60, 75),
                           scale_factor=(2., 2.)),
               make_sample(ONE_GT),
               make_sample(ONE_GT)]
    metas = [s.metainfo for s in samples]
    x = pyramid(batch=4, seed=11)
    for level in x:
        level[3].zero_()  # image 3: every score at the prior, < 0.01
    with torch.no_grad():
        outs = bbox_head(x)
        pixel_embeds = mask_head(x)[0]
        boxes = bbox_head.predict_by_feat(*outs, batch_img_metas=metas)
        batched = mask_head.predict_by_feat(pixel_embeds, None,
                                            [r.clone() for r in boxes], metas)
    assert len(batched[3]) == 0 and batched[3].masks.shape == (0, 128, 160)
    areas = []
    for i in range(4):
        with torch.no_grad():
            (box, ) = bbox_head.predict_by_feat(
                *[[t[i:i + 1] for t in o] for o in outs],
                batch_img_metas=metas[i:i + 1])
            (alone, ) = mask_head.predict_by_feat(
                pixel_embeds[i:i + 1], None, [box], metas[i:i + 1])
        got = batched[i]
        assert len(got) == len(alone)
        for key in ('labels', 'points'):
            assert torch.equal(got.get(key), alone.get(key)), (i, key)
        for key in ('bboxes', 'scores', 'embeddings', 'margins'):
            torch.testing.assert_close(got.get(key), alone.get(key),
                                       rtol=1e-6, atol=1e-6)
        assert got.masks.shape == alone.masks.shape
        assert (got.masks != alone.masks).sum() <= 2, i
        if i < 3:
            assert len(got) > 5
            areas.append(got.masks.flatten(1).float().mean(1))
    areas = torch.cat(areas)
    assert ((areas > 0.001) & (areas < 0.5)).sum() >= 5  # varied masks
