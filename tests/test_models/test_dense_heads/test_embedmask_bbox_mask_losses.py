"""EmbedMask heads in training: losses, embeddings, sampling, config errors."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401  (registers the heads and the loss)
from embedmask_mmdet.models.utils import location_map
from heads_common import (  # noqa: E402
    EMBED_DIM, EMBEDMASK_PREFIXES, H, IN_CH, NUM_CLASSES, ONE_GT,
    STRIDES, THREE_GTS, W, bbox_head_cfg, build_heads, make_sample,
    make_test_cfg, mask_head_cfg, MaskCounter, predict, pyramid,
    rect_mask, run_losses, zero_embedding_convs)


# ------------------------------------------------------------------ losses
@pytest.mark.parametrize('design', ['default', 'v3'])
def test_loss_empty_gt(design):
    bbox_head, mask_head = build_heads(design)
    x = pyramid(batch=2)
    losses, infos = run_losses(bbox_head, mask_head, x,
                               [make_sample(), make_sample()])
    assert all(len(i) == 0 for i in infos)
    for name, value in losses.items():
        assert torch.isfinite(value).all(), name
    assert losses['loss_cls'].item() > 0
    assert losses['loss_mask'].item() == 0.
    assert losses['loss_bbox'].item() == 0.
    assert ('loss_semantic' in losses) == (design == 'default')
    if design == 'default':
        # no foreground anywhere: the semantic focal loss still trains bg
        assert losses['loss_semantic'].item() > 0
    assert losses['loss_mask'].requires_grad
    sum(losses.values()).backward()
    for name, p in [*bbox_head.named_parameters(),
                    *mask_head.named_parameters()]:
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_loss_mixed_batch_one_image_without_gt():
    bbox_head, mask_head = build_heads()
    counter = MaskCounter(mask_head)
    losses, infos = run_losses(bbox_head, mask_head, pyramid(batch=2),
                               [make_sample(), make_sample(ONE_GT)])
    assert len(infos[0]) == 0 and len(infos[1]) > 0
    assert counter.counts == [len(infos[1])]
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() > 0, name


@pytest.mark.parametrize('design', ['default', 'v3', 'scalar', 'fixed'])
def test_loss_one_gt_and_gradients(design):
    bbox_head, mask_head = build_heads(design)
    x = pyramid(batch=1, seed=1)
    losses, infos = run_losses(bbox_head, mask_head, x, [make_sample(ONE_GT)])
    assert len(infos[0]) > 0
    for name, value in losses.items():
        assert torch.isfinite(value) and value.item() > 0, name
    assert set(losses) >= {'loss_cls', 'loss_bbox', 'loss_centerness',
                           'loss_mask'}
    sum(losses.values()).backward()
    levels_with_positives = {STRIDES.index(int(s)) for s in infos[0].strides}
    named = [*bbox_head.named_parameters(), *mask_head.named_parameters()]
    names = [n for n, _ in named]
    if design == 'v3':
        assert 'coord_scale' in names
    if design != 'fixed':
        assert any(n.startswith('embedding_head.margin_conv') for n in names)
    for name, p in named:
        assert p.grad is not None, f'{name} got no gradient'
        assert torch.isfinite(p.grad).all(), name
        if not name.startswith(EMBEDMASK_PREFIXES):
            continue
        if name.startswith('margin_scales.'):
            if int(name.split('.')[1]) not in levels_with_positives:
                continue  # no positive on that level: a zero is right
        assert p.grad.abs().sum() > 0, f'{name} has a zero gradient'


P2_DESIGN = (dict(start_level=1),
             dict(pixel_branch=dict(type='p2p5_fusion', feat_channels=8,
                                    num_stacked_convs=1),
                  semantic_level=1))


def p2_pyramid(batch=1, seed=0):
    """P2 (stride 4) in front of :func:`pyramid`'s P3-P7."""
    g = torch.Generator().manual_seed(seed + 100)
    p2 = torch.rand(batch, IN_CH, H // 4, W // 4, generator=g)
    return (p2, ) + pyramid(batch=batch, seed=seed)


def test_p2_pixel_branch_levels_strides_and_gradients():
    """'p2p5_fusion': the box head reads P3-P7 (start_level=1), the pixel
    branch fuses P2-P5 at stride 4, the semantic branch reads P3."""
    bbox_p2, mask_p2 = build_heads('default', *P2_DESIGN)
    bbox_p3, _ = build_heads('default')
    bbox_p3.load_state_dict(bbox_p2.state_dict())
    x = p2_pyramid(seed=1)
    with torch.no_grad():
        for a, b in zip(bbox_p2(x), bbox_p3(x[1:])):
            for ta, tb in zip(a, b):
                assert torch.equal(ta, tb)
        pixel_embed, sem = mask_p2(x)
    assert mask_p2.prob_stride == 4 and mask_p2.semantic_stride == 8
    assert pixel_embed.shape == (1, EMBED_DIM, H // 4, W // 4)
    assert sem.shape == (1, NUM_CLASSES, H // 8, W // 8)
    losses, infos = run_losses(bbox_p2, mask_p2, x, [make_sample(ONE_GT)])
    assert len(infos[0]) > 0
    sum(losses.values()).backward()
    for name, p in mask_p2.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # every fused level reaches the embedding
    assert len(mask_p2.pixel_branch.convs_all_levels) == 4
    # masks come out at the input size
    _, results = predict(bbox_p2, mask_p2, x, [make_sample(ONE_GT)])
    assert results[0].masks.shape[1:] == (H, W)


def test_bbox_head_level_count_mismatch_is_an_error():
    bbox_head, _ = build_heads('default', dict(start_level=1))
    with pytest.raises(ValueError, match='start_level'):
        bbox_head(pyramid())  # 5 levels, 4 after start_level


def test_margin_scales_only_for_per_dim_margins():
    """margin_scales act on the per-dimension spatial margins; with one shared
    or a fixed margin they would be parameters without gradient (DDP
    ``find_unused_parameters`` errors)."""
    for margin_type in ('scalar', 'fixed'):
        bbox_head, _ = build_heads(
            bbox_overrides=dict(margin_type=margin_type))
        assert not any(n.startswith('margin_scales')
                       for n, _ in bbox_head.named_parameters())


def test_margin_types_shapes_and_values():
    x = pyramid(seed=2)
    for margin_type in ('per_dim', 'scalar', 'fixed'):
        bbox_head, _ = build_heads(
            bbox_overrides=dict(margin_type=margin_type))
        params = bbox_head.forward(x)[3]
        for lvl, p in enumerate(params):
            assert p.shape == (1, 2 * EMBED_DIM, *x[lvl].shape[-2:])
            margins = p[:, EMBED_DIM:]
            assert (margins > 0).all()
            if margin_type != 'per_dim':
                # one value shared by all dimensions
                torch.testing.assert_close(
                    margins, margins[:, :1].expand_as(margins))
            if margin_type == 'fixed':
                torch.testing.assert_close(
                    margins, torch.full_like(margins, math.log(2.) / 4.))


def test_initial_margin_is_the_prior():
    """After init_weights (mmengine re-initialises every conv of the head),
    the margin conv bias still gives p = 0.5 at distance prior_margin."""
    bbox_head, _ = build_heads(bbox_overrides=dict(prior_margin=3.0))
    torch.testing.assert_close(
        bbox_head.embedding_head.margin_conv.bias.detach(),
        torch.full((EMBED_DIM, ), math.log(math.log(2.) / 9.)))


# --------------------------------------------- embeddings, zero conv outputs
@pytest.mark.parametrize('design', ['default', 'v3'])
def test_zero_conv_proposal_embedding_equals_pixel_embedding(design):
    bbox_head, mask_head = build_heads(
        design, bbox_overrides=dict(sample_in_mask=False))
    zero_embedding_convs(bbox_head, mask_head)
    if design == 'v3':
        with torch.no_grad():
            mask_head.coord_scale.fill_(1.7)  # shared by both branches
    x = pyramid(batch=2, seed=3)
    samples = [make_sample(THREE_GTS), make_sample(ONE_GT)]
    _, infos = run_losses(bbox_head, mask_head, x, samples)
    pixel = mask_head.pixel_embedding(x)
    stride = 8 if design == 'default' else 4
    assert pixel.shape == (2, EMBED_DIM, H // stride, W // stride)
    scale = 1.7 if design == 'v3' else 1.
    coords = location_map(H // stride, W // stride, stride)
    if design == 'v3':
        # the FCOS repo adds the stride-8 coordinates, then upsamples: the
        # stride-4 centres inside, the edge cells' on the border
        coords = F.interpolate(location_map(H // 8, W // 8, 8)[None],
                               scale_factor=2, mode='bilinear',
                               align_corners=False)[0]
        assert torch.equal(coords[:, 1:-1, 1:-1],
                           location_map(H // 4, W // 4, 4)[:, 1:-1, 1:-1])
    torch.testing.assert_close(pixel[0, :2], coords * scale / 100.)
    checked = 0
    for img, info in enumerate(infos):
        q = mask_head.proposal_embedding(info)
        assert q.shape == (len(info), EMBED_DIM)
        for k in range(len(info)):
            if int(info.strides[k]) != 8:
                continue
            # P3 location (i, j) has its centre at ((j + .5) 8, (i + .5) 8)
            j = int(info.points[k, 0] / 8)
            i = int(info.points[k, 1] / 8)
            assert info.points[k].tolist() == [(j + .5) * 8, (i + .5) * 8]
            if design == 'default':
                cell = pixel[img, :, i, j]
            elif i in (0, H // 8 - 1) or j in (0, W // 8 - 1):
                continue  # border: the edge-cell coordinates (above)
            else:
                # stride 4: the point is the corner shared by cells
                # (2i..2i+1, 2j..2j+1); no stride-4 centre equals it
                cell = pixel[img, :, 2 * i:2 * i + 2,
                             2 * j:2 * j + 2].mean(dim=(1, 2))
            torch.testing.assert_close(q[k], cell, atol=1e-6, rtol=0)
            checked += 1
    assert checked >= 10
    # and then p = 1 on the proposal's own cell (stride 8 design)
    if design == 'default':
        info = infos[1]
        prob = mask_head.mask_prob_at_out_stride(pixel[1], info)
        assert prob.shape == (len(info), H // 4, W // 4)
        k = 0
        j, i = [int(v) for v in (info.points[k] / 4)]
        # the out-stride (4) cells around the P3 centre
        assert prob[k, i - 1:i + 1, j - 1:j + 1].min() > 0.99


# ----------------------------------------------------------------- sampling
def test_max_masks_to_train_cap():
    samples = [make_sample(THREE_GTS), make_sample(ONE_GT)]
    x = pyramid(batch=2, seed=4)
    total = None
    for cap, expected in ((-1, None), (3, 3), (1000, None)):
        bbox_head, mask_head = build_heads(
            mask_overrides=dict(max_masks_to_train=cap))
        counter = MaskCounter(mask_head)
        losses, infos = run_losses(bbox_head, mask_head, x, samples)
        total = sum(len(i) for i in infos)
        assert total > 10
        assert counter.counts == [expected or total]
        assert torch.isfinite(losses['loss_mask'])


def test_best_iou_per_gt_picks_the_best_positive_per_gt():
    bbox_head, mask_head = build_heads(
        mask_overrides=dict(sampling='best_iou_per_gt'))
    # sizeable, location-dependent predicted boxes, so that IoUs differ
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        bbox_head.conv_reg.weight.normal_(0, 0.2, generator=g)
        bbox_head.conv_reg.bias.fill_(2.)
    x = pyramid(batch=2, seed=5)
    samples = [make_sample(THREE_GTS), make_sample(ONE_GT)]
    outs = bbox_head.forward(x)
    gts = [s.gt_instances for s in samples]
    bbox_head.loss_by_feat(*outs, gts, [s.metainfo for s in samples])
    infos = bbox_head.get_positive_infos()
    sampled = mask_head.sample_positives(infos, gts)
    bbox_preds = outs[1]
    for img, (info, chosen, gt) in enumerate(zip(infos, sampled, gts)):
        # one positive per gt
        assert sorted(chosen.pos_assigned_gt_inds.tolist()) == \
            list(range(len(gt)))
        # predicted boxes decoded independently from the head outputs
        boxes = []
        for point, stride in zip(info.points, info.strides):
            lvl = STRIDES.index(int(stride))
            j, i = int(point[0] // stride), int(point[1] // stride)
            l, t, r, b = (bbox_preds[lvl][img, :, i, j] * stride).tolist()
            boxes.append([point[0] - l, point[1] - t, point[0] + r,
                          point[1] + b])
        boxes = torch.tensor(boxes)
        torch.testing.assert_close(info.bboxes, boxes)
        ious = bbox_overlaps(boxes, gt.bboxes[info.pos_assigned_gt_inds],
                             is_aligned=True)
        for gt_id in range(len(gt)):
            of_gt = info.pos_assigned_gt_inds == gt_id
            assert of_gt.sum() > 1  # a real choice
            best = ious[of_gt].max()
            assert ious[of_gt].unique().numel() > 1
            k = (chosen.pos_assigned_gt_inds == gt_id).nonzero().item()
            pos = (info.pos_inds == chosen.pos_inds[k]).nonzero().item()
            assert ious[pos] == best
    # through the loss: exactly one mask per gt is trained
    counter = MaskCounter(mask_head)
    mask_head.loss(x, samples, positive_infos=infos)
    assert counter.counts == [4]


def test_best_iou_per_gt_ties_keep_one():
    _, mask_head = build_heads(mask_overrides=dict(sampling='best_iou_per_gt'))
    gt = InstanceData(bboxes=torch.tensor([[0., 0., 10., 10.],
                                           [20., 20., 40., 40.]]))
    info = InstanceData(
        bboxes=torch.tensor([[0., 0., 5., 5.]] * 3 + [[20., 20., 30., 30.]]),
        pos_assigned_gt_inds=torch.tensor([0, 0, 0, 1]),
        pos_inds=torch.tensor([7, 8, 9, 10]))
    out = mask_head.sample_positives([info], [gt])[0]
    assert out.pos_inds.tolist() == [7, 10]


def l_shaped_mask():
    """Box (32, 32, 96, 96); mask = left strip x < 56 plus bottom strip
    y >= 72. mmdet centres the sampling region on the mask centroid in pixel
    indices, (55.8, 71.2); radius 1.5 x 8 puts 9 P3 positives at x, y in
    {44, 52, 60} x {60, 68, 76}: 7 inside the L, 2 outside."""
    m = np.zeros((H, W), np.uint8)
    m[32:96, 32:56] = 1
    m[72:96, 32:96] = 1
    return m


def test_sample_in_mask_removes_positives_outside_the_mask():
    box = [[32., 32., 96., 96.]]
    mask = l_shaped_mask()
    x = pyramid(seed=6)
    results = {}
    for flag in (False, True):
        bbox_head, _ = build_heads(bbox_overrides=dict(sample_in_mask=flag))
        sample = make_sample(box, masks=[mask])
        bbox_head.loss(x, [sample])
        info = bbox_head.get_positive_infos()[0]
        results[flag] = {tuple(p) for p in info.points.int().tolist()}
        if flag:
            # removed positives are background for the classifier too
            mlvl_points = bbox_head.prior_generator.grid_priors(
                [f.shape[-2:] for f in x], device='cpu')
            labels, _, _, _ = bbox_head.get_targets(mlvl_points,
                                                    [sample.gt_instances])
            points = torch.cat(mlvl_points)
            fg = torch.cat(labels) < NUM_CLASSES
            assert {tuple(p) for p in points[fg].int().tolist()} == \
                results[True]
    grid = {(x_, y_) for x_ in (44, 52, 60) for y_ in (60, 68, 76)}
    assert results[False] == grid
    inside = {(x_, y_) for x_, y_ in grid if mask[y_, x_]}
    assert inside == grid - {(60, 60), (60, 68)}
    assert results[True] == inside


def test_sample_in_mask_ring_mask_without_positive():
    """A ring whose centre (and so every centre-sampling positive) lies in
    the hole: no positive is left and the losses stay finite."""
    box = [[24., 24., 104., 104.]]
    mask = rect_mask(box[0])
    mask[40:88, 40:88] = 0
    bbox_head, mask_head = build_heads(
        bbox_overrides=dict(sample_in_mask=True))
    losses, infos = run_losses(bbox_head, mask_head, pyramid(seed=7),
                               [make_sample(box, masks=[mask])])
    assert len(infos[0]) == 0
    assert losses['loss_mask'].item() == 0.
    for name, value in losses.items():
        assert torch.isfinite(value), name


# ------------------------------------------------------------ config errors
@pytest.mark.parametrize('overrides,key', [
    (dict(embed_dim=2), 'embed_dim'),
    (dict(embed_dim=0), 'embed_dim'),
    (dict(prior_margin=0.), 'prior_margin'),
    (dict(prior_margin=-1.), 'prior_margin'),
    (dict(proposal_head='conv5'), 'proposal_head'),
    (dict(margin_type='per_pixel'), 'margin_type'),
    (dict(test_cfg=make_test_cfg(score_type='cls')), 'score_type'),
    (dict(start_level=-1), 'start_level'),
])
def test_bbox_head_config_errors(overrides, key):
    with pytest.raises(ValueError, match=key):
        MODELS.build(bbox_head_cfg(**overrides))


@pytest.mark.parametrize('overrides,key', [
    (dict(embed_dim=2), 'embed_dim'),
    (dict(test_cfg=make_test_cfg(mask_thr=0.)), 'mask_thr'),
    (dict(test_cfg=make_test_cfg(mask_thr=1.)), 'mask_thr'),
    (dict(test_cfg=make_test_cfg(mask_thr=1.5)), 'mask_thr'),
    (dict(pixel_branch=dict(type='p2_tower')), 'pixel_branch'),
    (dict(sampling='top_k'), 'sampling'),
    (dict(prob_eps=0.), 'prob_eps'),
    (dict(semantic_level=-1), 'semantic_level'),
    # stride-4 branch upsampled to 2 would not match the stride-4 loss
    (dict(pixel_branch=dict(type='p2p5_fusion', upsample_embedding=True)),
     'mask_out_stride'),
    (dict(alignment='corner'), 'alignment'),
    (dict(loss_mask_norm='pixels'), 'loss_mask_norm'),
    (dict(alignment='adelaidet',
          test_cfg=make_test_cfg(mask_resample='embedding')), 'mask_resample'),
    (dict(pixel_branch=dict(type='p3p5_fusion', pred_kernel_size=5)),
     'pred_kernel_size'),
])
def test_mask_head_config_errors(overrides, key):
    with pytest.raises(ValueError, match=key):
        MODELS.build(mask_head_cfg(**overrides))
