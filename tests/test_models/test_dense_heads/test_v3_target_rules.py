"""FCOS target rules of EmbedMaskBboxHead: mmdet's CondInst defaults and the
FCOS-repo (v3) rules, in-mask test before the min-area choice and box-centre
sampling (yinghdb/EmbedMask e9465cb, embed_mask/loss.py
compute_targets_for_locations / get_sample_region)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from mmdet.registry import MODELS
from mmdet.structures.mask import BitmapMasks
from mmengine.config import Config
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401  (registers the heads)


NUM_CLASSES = 3
STRIDES = [8, 16, 32, 64, 128]
REGRESS_RANGES = ((-1, 64), (64, 128), (128, 256), (256, 512), (512, 1e8))
H, W = 128, 160  # padded input size, also the gt mask size
FEAT_SIZES = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]  # ceil(H / s)
V3_CONFIG = Path(__file__).resolve().parents[3] / 'configs' / 'embedmask' / \
    'embedmask-v3_r50-caffe_fpn_8xb2-1x_coco.py'

COMMON = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8,
              stacked_convs=1, strides=STRIDES, regress_ranges=REGRESS_RANGES,
              norm_on_bbox=True, centerness_on_reg=True, center_sampling=True,
              center_sample_radius=1.5,
              norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))


def embedmask_head(**overrides):
    return MODELS.build(dict(type='EmbedMaskBboxHead', embed_dim=4,
                             proposal_channels=8, **{**COMMON, **overrides}))


def condinst_head(**overrides):
    return MODELS.build(dict(type='CondInstBboxHead',
                             **{**COMMON, **overrides}))


def gts(boxes, masks, labels=None):
    boxes = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    labels = torch.arange(len(boxes)) % NUM_CLASSES if labels is None \
        else torch.tensor(labels)
    masks = np.stack(masks) if len(masks) else np.zeros((0, H, W), np.uint8)
    return InstanceData(bboxes=boxes, labels=labels.long(),
                        masks=BitmapMasks(masks, H, W))


def rect(box, h=H, w=W):
    m = np.zeros((h, w), np.uint8)
    x1, y1, x2, y2 = [int(v) for v in box]
    m[y1:y2, x1:x2] = 1
    return m


def targets(head, gt_instances):
    """get_targets of one image: points (P, 2), labels (P,), bbox targets
    (P, 4, stride-normalised), pos_inds (N,), pos_gt_inds (N,)."""
    mlvl_points = head.prior_generator.grid_priors(FEAT_SIZES, device='cpu')
    labels, bbox_targets, pos_inds, pos_gt_inds = head.get_targets(
        mlvl_points, [gt_instances])
    return (torch.cat(mlvl_points), torch.cat(labels), torch.cat(bbox_targets),
            pos_inds[0], pos_gt_inds[0])


def point_index(points, xy):
    """Index of the first (level-0) location at xy."""
    hit = ((points[:, 0] == xy[0]) & (points[:, 1] == xy[1])).nonzero()
    return int(hit[0])


def positive_points(head, gt_instances):
    points, _, _, pos_inds, _ = targets(head, gt_instances)
    return {tuple(p) for p in points[pos_inds].int().tolist()}


# ---------------------------------------- (a) in-mask test before min area
SMALL = [40., 40., 72., 72.]   # area 1024, mask with a hole around (52, 52)
LARGE = [24., 24., 88., 88.]   # area 4096, full mask
P = (52, 52)                   # level-0 location in both boxes and regions


def overlap_case():
    small = rect(SMALL)
    small[48:60, 48:60] = 0
    assert small[P[1], P[0]] == 0 and rect(LARGE)[P[1], P[0]] == 1
    return gts([SMALL, LARGE], [small, rect(LARGE)], labels=[0, 1])


@pytest.mark.parametrize('center_sample_on', ['mask', 'box'])
def test_location_outside_small_mask_goes_to_larger_gt(center_sample_on):
    gt = overlap_case()
    results = {}
    for flag in (False, True):
        head = embedmask_head(sample_in_mask=flag,
                              center_sample_on=center_sample_on)
        points, labels, bbox_targets, pos_inds, pos_gt_inds = targets(head,
                                                                      gt)
        i = point_index(points, P)
        assert i in pos_inds.tolist()
        gt_ind = int(pos_gt_inds[pos_inds == i])
        results[flag] = gt_ind
        box = gt.bboxes[gt_ind]
        expect = torch.stack([P[0] - box[0], P[1] - box[1], box[2] - P[0],
                              box[3] - P[1]]) / STRIDES[0]
        assert int(labels[i]) == int(gt.labels[gt_ind])
        assert torch.equal(bbox_targets[i], expect)
        # every positive lies in its gt's mask under sample_in_mask
        if flag:
            masks = torch.from_numpy(gt.masks.masks).bool()
            xy = points[pos_inds].long()
            assert masks[pos_gt_inds, xy[:, 1], xy[:, 0]].all()
    # smallest box area without the mask rule, the larger gt with it
    assert results == {False: 0, True: 1}


def test_points_in_masks_reads_row_y_column_x_and_pads_with_zero():
    head = embedmask_head()
    mask = torch.zeros(1, 24, 16, dtype=torch.bool)
    mask[0, 20, 12] = True  # row y=20, column x=12
    mask[0, 23, 15] = True  # last pixel
    points = torch.tensor([[12., 20.], [20., 12.], [12.5, 20.9],
                           [15.5, 23.5], [16.5, 23.5], [15.5, 24.5]])
    inside = head._points_in_masks(points, mask)
    assert inside.shape == (6, 1)
    # pixel floor(x), floor(y); beyond the mask is background (reference
    # zero-pads), not the clamped edge pixel
    assert inside[:, 0].tolist() == [True, False, True, True, False, False]


def test_sample_in_mask_without_masks_is_an_error():
    head = embedmask_head(sample_in_mask=True)
    gt = InstanceData(bboxes=torch.tensor([SMALL]), labels=torch.tensor([0]))
    with pytest.raises(ValueError, match='sample_in_mask'):
        targets(head, gt)


# ----------------------------------------------- (b) box vs mask centre
BOX = [16., 16., 112., 112.]


def corner_mask():
    """Tight to BOX, but the mass sits in the top-left corner."""
    m = np.zeros((H, W), np.uint8)
    m[16:48, 16:48] = 1
    m[111, 16:112] = 1
    m[16:112, 111] = 1
    return m


def rule_positives(center, box=BOX, radius=1.5):
    """Brute force of the centre-sampling rule for one gt: inside the box
    clipped region centre +- stride * radius, max distance in range."""
    cx, cy = center
    out = set()
    for stride, (fh, fw), (lo, hi) in zip(STRIDES, FEAT_SIZES,
                                          REGRESS_RANGES):
        r = stride * radius
        for j in range(fh):
            for i in range(fw):
                x, y = (i + 0.5) * stride, (j + 0.5) * stride
                d = (x - box[0], y - box[1], box[2] - x, box[3] - y)
                if (max(cx - r, box[0]) < x < min(cx + r, box[2])
                        and max(cy - r, box[1]) < y < min(cy + r, box[3])
                        and lo <= max(d) <= hi):
                    out.add((int(x), int(y)))
    return out


def test_box_centre_vs_mask_centre_sampling():
    mask = corner_mask()
    gt = gts([BOX], [mask])
    ys, xs = np.nonzero(mask)
    centroid = (xs.mean(), ys.mean())
    assert centroid[0] < 45 and centroid[1] < 45  # box centre is (64, 64)

    on_box = positive_points(embedmask_head(center_sample_on='box'), gt)
    on_mask = positive_points(embedmask_head(center_sample_on='mask'), gt)
    # box centre: the four level-0 locations within 12 px of (64, 64)
    assert on_box == {(60, 60), (60, 68), (68, 60), (68, 68)}
    assert on_box == rule_positives((64., 64.))
    assert on_mask == rule_positives(centroid)
    assert on_mask and not on_mask & on_box
    # v3 (box centre + in-mask): the box centre region misses the mask
    v3 = embedmask_head(center_sample_on='box', sample_in_mask=True)
    assert positive_points(v3, gt) == set()


def test_center_sample_on_is_checked():
    with pytest.raises(ValueError, match='center_sample_on'):
        embedmask_head(center_sample_on='centroid')


def test_v3_config_sets_the_v3_rules():
    bbox_head = Config.fromfile(str(V3_CONFIG)).model.bbox_head
    assert bbox_head.sample_in_mask and bbox_head.center_sample_on == 'box'
    assert embedmask_head().center_sample_on == 'mask'


# ------------------------------------- (c) defaults equal mmdet's CondInst
def random_gts(rng, num_gts):
    boxes, masks = [], []
    for _ in range(num_gts):
        w, h = rng.integers(4, W), rng.integers(4, H)
        x1, y1 = rng.integers(0, W - w + 1), rng.integers(0, H - h + 1)
        box = [x1, y1, x1 + w, y1 + h]
        m = rect(box) & (rng.random((H, W)) < rng.uniform(0.2, 1.0))
        if rng.random() < 0.1:
            m[:] = 0  # empty mask: centroid (0, 0) in both heads
        boxes.append([float(v) for v in box])
        masks.append(m.astype(np.uint8))
    if num_gts > 1 and rng.random() < 0.5:
        # equal areas: min-area ties must break the same way
        boxes.append(list(boxes[0]))
        masks.append(masks[-1])
    labels = rng.integers(0, NUM_CLASSES, len(boxes)).tolist()
    return gts(boxes, masks, labels)


def assert_same_targets(a, b):
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and torch.equal(x, y)


@pytest.mark.parametrize('center_sampling', [True, False])
def test_default_targets_equal_condinst(center_sampling):
    ours = embedmask_head(center_sampling=center_sampling)
    ref = condinst_head(center_sampling=center_sampling)
    rng = np.random.default_rng(0)
    num_pos = 0
    for num_gts in [0, 1, 2, 3, 5, 8] * 4:
        gt = random_gts(rng, num_gts)
        got, want = targets(ours, gt), targets(ref, gt)
        assert_same_targets(got, want)
        num_pos += len(want[3])
    assert num_pos > 100


def test_box_centre_equals_condinst_without_masks():
    """center_sample_on='box' is mmdet's own rule for gts without masks."""
    ours = embedmask_head(center_sample_on='box')
    ref = condinst_head()
    rng = np.random.default_rng(1)
    for num_gts in [1, 2, 4, 8] * 4:
        gt = random_gts(rng, num_gts)
        no_masks = InstanceData(bboxes=gt.bboxes, labels=gt.labels)
        assert_same_targets(targets(ours, gt), targets(ref, no_masks))


# ------------------------------------------------ v3 mask loss normalisation
def _mask_loss_case(loss_mask_norm):
    """Three images: 1 trained mask, 3 trained masks, none. Returns the
    head's loss and the per-mask Lovász losses of each image."""
    from embedmask_mmdet.models.utils import mask_logit
    from embedmask_mmdet.models.utils.mask_targets import cell_targets
    torch.manual_seed(0)
    head = MODELS.build(dict(
        type='EmbedMaskMaskHead', num_classes=3, in_channels=8, embed_dim=4,
        pixel_branch=dict(type='p3p5_fusion', feat_channels=8,
                          num_stacked_convs=1),
        loss_mask=dict(type='LovaszHingeLoss', loss_weight=0.5),
        loss_mask_norm=loss_mask_norm, loss_semantic=None))
    h, w = 64, 64
    pixel_embeds = torch.randn(3, 4, h // 8, w // 8)
    infos, gts = [], []
    for n_pos in (1, 3, 0):
        gt = InstanceData()
        masks = np.zeros((2, h, w), np.uint8)
        masks[0, 8:40, 8:30] = 1
        masks[1, 20:60, 30:50] = 1
        gt.masks = BitmapMasks(masks, h, w)
        gt.labels = torch.tensor([0, 1])
        gt.bboxes = torch.tensor([[8., 8., 30., 40.], [30., 20., 50., 60.]])
        info = InstanceData()
        info.embeddings = torch.randn(n_pos, 4)
        info.margins = torch.rand(n_pos, 4) * 0.05
        info.points = torch.rand(n_pos, 2) * 60
        info.pos_inds = torch.arange(n_pos)
        info.pos_assigned_gt_inds = torch.arange(n_pos) % 2
        infos.append(info)
        gts.append(gt)
    loss = head.loss_by_feat(pixel_embeds, None, gts, [{}] * 3, infos)
    per_image = []
    lovasz = MODELS.build(dict(type='LovaszHingeLoss', reduction='none'))
    for embed, info, gt in zip(pixel_embeds, infos, gts):
        if len(info) == 0:
            per_image.append(torch.zeros(0))
            continue
        logits = mask_logit(head.mask_prob_at_out_stride(embed, info), 1e-6)
        target = cell_targets(gt.masks.to_tensor(torch.bool, 'cpu'), 4)
        per_image.append(lovasz(logits, target[info.pos_assigned_gt_inds]
                                .float()))
    return loss['loss_mask'], per_image


def test_v3_mask_loss_mean_per_image_then_over_images():
    """FCOS repo: each image's masks averaged, summed over images, divided
    by the number of images (the empty one included), times the weight."""
    loss, per_image = _mask_loss_case('images')
    expected = 0.5 * sum(l.mean() for l in per_image if len(l)) / 3
    torch.testing.assert_close(loss, expected)


def test_adelaidet_mask_loss_mean_over_masks():
    loss, per_image = _mask_loss_case('instances')
    expected = 0.5 * torch.cat(per_image).mean()
    torch.testing.assert_close(loss, expected)
    # the two rules differ on this case: the test can tell them apart
    other, _ = _mask_loss_case('images')
    assert not torch.isclose(loss, other)
