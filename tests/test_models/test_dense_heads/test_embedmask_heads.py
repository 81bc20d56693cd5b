"""EmbedMask box and mask heads, mmdet style: tiny heads on random pyramids."""
import copy
import math

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.bbox import bbox_overlaps
from mmdet.structures.mask import BitmapMasks
from mmengine.config import ConfigDict
from mmengine.logging import MMLogger
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401  (registers the heads and the loss)
from embedmask_mmdet.models.utils.mask_paste import \
    paste_masks
from embedmask_mmdet.models.utils import location_map

torch.set_num_threads(1)  # 2 threads spin-wait on a loaded 2-core box
# init_weights() reports every parameter at INFO level
MMLogger.get_current_instance().setLevel('WARNING')

IN_CH = 16
EMBED_DIM = 4
NUM_CLASSES = 3
STRIDES = [8, 16, 32, 64, 128]
H, W = 128, 160  # padded input size of every test image

TEST_CFG = ConfigDict(
    nms_pre=1000, min_bbox_size=0, score_thr=0.0,
    nms=dict(type='nms', iou_threshold=0.6), max_per_img=20,
    score_type='cls_ctr', mask_thr=0.5, crop_to_box=False)


def make_test_cfg(**overrides):
    cfg = copy.deepcopy(TEST_CFG)
    cfg.update(overrides)
    return cfg


def bbox_head_cfg(**overrides):
    cfg = dict(
        type='EmbedMaskBboxHead', num_classes=NUM_CLASSES,
        in_channels=IN_CH, feat_channels=16, stacked_convs=1,
        strides=STRIDES,
        regress_ranges=((-1, 64), (64, 128), (128, 256), (256, 512),
                        (512, 1e8)),
        norm_on_bbox=True, centerness_on_reg=True, center_sampling=True,
        center_sample_radius=1.5, conv_bias=True,
        norm_cfg=dict(type='GN', num_groups=4, requires_grad=True),
        embed_dim=EMBED_DIM, prior_margin=2.0, proposal_head='conv1_conv3',
        proposal_channels=8, margin_type='per_dim', sample_in_mask=False,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                      alpha=0.25, loss_weight=1.0),
        loss_bbox=dict(type='GIoULoss', loss_weight=1.0),
        loss_centerness=dict(type='CrossEntropyLoss', use_sigmoid=True,
                             loss_weight=1.0),
        test_cfg=copy.deepcopy(TEST_CFG))
    cfg.update(overrides)
    return cfg


def mask_head_cfg(**overrides):
    cfg = dict(
        type='EmbedMaskMaskHead', num_classes=NUM_CLASSES, in_channels=IN_CH,
        embed_dim=EMBED_DIM,
        pixel_branch=dict(type='p3p5_fusion', feat_channels=8,
                          num_stacked_convs=1),
        with_coords=True, learnable_coord_scale=False, mask_out_stride=4,
        sampling='all_positives', max_masks_to_train=500, prob_eps=1e-6,
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=1.0),
        loss_semantic=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0,
                           alpha=0.25, loss_weight=1.0),
        semantic_channels=8, test_cfg=copy.deepcopy(TEST_CFG))
    cfg.update(overrides)
    return cfg


# the two published designs (plus ablation switches)
DESIGNS = {
    'default': ({}, {}),
    'v3': (dict(proposal_head='conv3', sample_in_mask=True),
           dict(pixel_branch=dict(type='p3_tower', feat_channels=8,
                                  num_stacked_convs=1,
                                  norm_cfg=dict(type='GN', num_groups=4)),
                learnable_coord_scale=True, sampling='best_iou_per_gt',
                loss_semantic=None, prob_eps=1e-9,
                loss_mask=dict(type='LovaszHingeLoss', loss_weight=0.5))),
    'scalar': (dict(margin_type='scalar'), {}),
    'fixed': (dict(margin_type='fixed'), {}),
}


def build_heads(design='default', bbox_overrides=None, mask_overrides=None):
    b, m = DESIGNS[design]
    bbox_head = MODELS.build(bbox_head_cfg(**{**b, **(bbox_overrides or {})}))
    mask_head = MODELS.build(mask_head_cfg(**{**m, **(mask_overrides or {})}))
    bbox_head.init_weights()
    mask_head.init_weights()
    return bbox_head, mask_head


def pyramid(batch=1, seed=0, h=H, w=W):
    """Random neck outputs P3-P7 for an h x w padded input (ResNet/FPN sizes:
    each level is ceil(previous / 2))."""
    g = torch.Generator().manual_seed(seed)
    sizes, fh, fw = [], math.ceil(h / 8), math.ceil(w / 8)
    for _ in STRIDES:
        sizes.append((fh, fw))
        fh, fw = math.ceil(fh / 2), math.ceil(fw / 2)
    return tuple(torch.rand(batch, IN_CH, a, b, generator=g) for a, b in sizes)


def rect_mask(box, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = [int(v) for v in box]
    m[y1:y2, x1:x2] = 1
    return m


def make_sample(boxes=(), masks=None, labels=None, img_shape=(H, W),
                ori_shape=None, scale_factor=(1., 1.), pad_shape=(H, W)):
    """DetDataSample with gt masks of the padded size."""
    ph, pw = pad_shape
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    n = len(boxes)
    if masks is None:
        masks = [rect_mask(b, ph, pw) for b in boxes.tolist()]
    masks = np.stack(masks) if n else np.zeros((0, ph, pw), np.uint8)
    labels = torch.arange(n) % NUM_CLASSES if labels is None \
        else torch.tensor(labels)
    sample = DetDataSample(metainfo=dict(
        img_shape=img_shape, pad_shape=pad_shape, batch_input_shape=pad_shape,
        ori_shape=ori_shape or img_shape, scale_factor=scale_factor))
    sample.gt_instances = InstanceData(bboxes=boxes, labels=labels.long(),
                                       masks=BitmapMasks(masks, ph, pw))
    return sample


ONE_GT = [[40., 30., 100., 90.]]
THREE_GTS = [[40., 30., 100., 90.], [8., 60., 56., 120.], [96., 8., 152., 56.]]


def run_losses(bbox_head, mask_head, x, samples):
    """The detector's training data flow between the two heads."""
    losses = dict(bbox_head.loss(x, samples))
    positive_infos = bbox_head.get_positive_infos()
    losses.update(mask_head.loss(x, samples, positive_infos=positive_infos))
    return losses, positive_infos


class MaskCounter:
    """Wraps a head's loss_mask and records how many masks it sees."""

    def __init__(self, mask_head):
        self.counts = []
        inner = mask_head.loss_mask.forward

        def forward(pred, target, *args, **kwargs):
            self.counts.append(pred.shape[0])
            return inner(pred, target, *args, **kwargs)

        mask_head.loss_mask.forward = forward


EMBEDMASK_PREFIXES = ('embedding_head.', 'margin_scales.', 'pixel_branch.',
                      'semantic_convs.', 'semantic_logits.', 'coord_scale')


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
def zero_embedding_convs(bbox_head, mask_head):
    with torch.no_grad():
        for conv in (bbox_head.embedding_head.embed_conv,
                     mask_head.pixel_branch.conv_pred):
            conv.weight.zero_()
            conv.bias.zero_()


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
    torch.testing.assert_close(
        pixel[0, :2], location_map(H // stride, W // stride, stride) *
        scale / 100.)
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


# ------------------------------------------------------------------ predict
def predict(bbox_head, mask_head, x, samples, rescale=True, cfg=None):
    """The detector's test data flow: boxes at the input scale, then masks
    (and boxes) at ori_shape."""
    bbox_head.eval()
    mask_head.eval()
    if cfg is not None:
        bbox_head.test_cfg = cfg
        mask_head.test_cfg = cfg
    with torch.no_grad():
        boxes = bbox_head.predict(x, samples, rescale=False)
        before = [r.clone() for r in boxes]
        results = mask_head.predict(x, samples, rescale=rescale,
                                    results_list=boxes)
    return before, results


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


def bilinear_reference(prob, stride, img_shape, out_shape):
    """Output pixel (v, u) samples the input at ((u + .5) img_w / out_w,
    (v + .5) img_h / out_h), i.e. cell coordinate (. / stride - .5), with
    bilinear weights and edge clamping; written with numpy loops."""
    prob = prob.double().numpy()
    n, hh, ww = prob.shape

    def taps(dst, img, out, size):
        src = max((dst + .5) * img / out / stride - .5, 0.)
        lo = min(int(math.floor(src)), size - 1)
        hi = min(lo + 1, size - 1)
        return lo, hi, src - lo if lo < size - 1 else 0.

    out = np.zeros((n, *out_shape))
    for v in range(out_shape[0]):
        y0, y1, ly = taps(v, img_shape[0], out_shape[0], hh)
        for u in range(out_shape[1]):
            x0, x1, lx = taps(u, img_shape[1], out_shape[1], ww)
            out[:, v, u] = (prob[:, y0, x0] * (1 - ly) * (1 - lx) +
                            prob[:, y0, x1] * (1 - ly) * lx +
                            prob[:, y1, x0] * ly * (1 - lx) +
                            prob[:, y1, x1] * ly * lx)
    return torch.from_numpy(out)


@pytest.mark.parametrize('stride,prob_shape,img_shape,out_shape', [
    (8, (100, 6), (800, 48), (402, 24)),    # unpadded, rounds down
    (8, (16, 20), (120, 150), (60, 75)),    # padded input, downscale
    (4, (32, 40), (120, 150), (150, 190)),  # upscale
    (8, (16, 20), (128, 160), (128, 160)),  # identity scale
])
def test_paste_masks_matches_bilinear_reference(stride, prob_shape, img_shape,
                                                out_shape):
    g = torch.Generator().manual_seed(15)
    prob = torch.rand(3, *prob_shape, generator=g)
    ref = bilinear_reference(prob, stride, img_shape, out_shape)
    for thr in (0.3, 0.5):
        for max_elements in (2**25, out_shape[0] * out_shape[1]):  # chunks
            for regions in (False, True):
                masks = paste_masks(prob, stride, img_shape, out_shape, thr,
                                    max_elements=max_elements,
                                    regions=regions)
                assert masks.shape == (3, *out_shape) and \
                    masks.dtype == torch.bool
                undecided = (ref - thr).abs() < 1e-5
                assert torch.equal(masks[~undecided], (ref > thr)[~undecided])


@pytest.mark.parametrize('stride,prob_shape,img_shape,out_shape', [
    (8, (16, 20), (128, 160), (128, 160)),  # identity scale
    (8, (16, 20), (120, 150), (97, 203)),   # padded, non-integer scales
    (4, (32, 40), (120, 150), (150, 190)),  # upscale
])
def test_paste_masks_regions_equal_whole_image(stride, prob_shape, img_shape,
                                               out_shape):
    """Blobs of every size (none above the threshold, a few cells, one cell
    at a border, most of the image) pasted only inside their support
    rectangles equal the whole-image path and the bilinear reference, with
    the box crop too."""
    h, w = prob_shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5,
                            indexing='ij')
    blobs = [(h / 2, w / 2, 0.3), (h / 3, w / 4, 1.5), (0., w - 1., 1.),
             (h / 2, w / 2, 3 * max(h, w)), (h / 2, w / 2, 1e-3),
             (h - 1., 2., 2.)]
    prob = torch.stack([torch.exp(-((ys - cy)**2 + (xs - cx)**2) / (2 * r * r))
                        for cy, cx, r in blobs])
    prob[4] *= 0.2  # nothing above any threshold
    ref = bilinear_reference(prob, stride, img_shape, out_shape)
    g = torch.Generator().manual_seed(2)
    centre = torch.rand(len(blobs), 2, generator=g) * torch.tensor(
        [out_shape[1], out_shape[0]])
    boxes = torch.cat([centre - 20, centre + 20], 1)
    for thr in (0.3, 0.5, 0.9):
        whole = paste_masks(prob, stride, img_shape, out_shape, thr,
                            regions=False)
        region = paste_masks(prob, stride, img_shape, out_shape, thr,
                             regions=True)
        assert torch.equal(region, whole)
        undecided = (ref - thr).abs() < 1e-5
        assert torch.equal(region[~undecided], (ref > thr)[~undecided])
        assert not region[4].any() and region[3].any()
        torch.testing.assert_close(
            paste_masks(prob, stride, img_shape, out_shape, thr, boxes, 3.,
                        regions=True),
            paste_masks(prob, stride, img_shape, out_shape, thr, boxes, 3.,
                        regions=False))


@pytest.mark.parametrize('max_elements', [2**21, 3000])
def test_paste_masks_batched_regions_many_detections(max_elements):
    """Many detections of mixed sizes, several sharing a size class and some
    touching the image border (windows shifted inside it), batched into one
    group or split by a small element budget: equal to the whole image."""
    stride, prob_shape, img_shape, out_shape = 4, (30, 38), (118, 150), \
        (177, 225)
    h, w = prob_shape
    g = torch.Generator().manual_seed(5)
    num = 40
    cy = torch.rand(num, generator=g) * h
    cx = torch.rand(num, generator=g) * w
    cy[:4] = torch.tensor([0., h - 0.5, 3., h / 2])
    cx[:4] = torch.tensor([2., w / 2, w - 0.5, 0.])
    r = 0.5 + torch.rand(num, generator=g) * 3
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5,
                            indexing='ij')
    prob = torch.exp(-((ys - cy[:, None, None])**2 +
                       (xs - cx[:, None, None])**2) /
                     (2 * r[:, None, None]**2))
    for thr in (0.2, 0.5):
        whole = paste_masks(prob, stride, img_shape, out_shape, thr,
                            regions=False)
        region = paste_masks(prob, stride, img_shape, out_shape, thr,
                             max_elements=max_elements, regions=True)
        assert whole.any(dim=(1, 2)).all()
        assert torch.equal(region, whole)
