"""Training equals the authors' code: FCOS targets, every loss value and the
mask loss's inputs of the reference-exact design, on a constructed batch.

The reference is the authors' training code, transcribed here in float64
from yinghdb/AdelaiDet 94a9b7c (read as text, not imported):
``adet/modeling/fcos/fcos_outputs.py`` (compute_targets_for_locations,
get_sample_region, compute_ctrness_targets, fcos_losses),
``adet/utils/comm.py`` (compute_ious, aligned_bilinear, compute_locations),
``adet/layers/iou_loss.py``, fvcore's sigmoid_focal_loss,
``adet/modeling/embedmask/embedmask.py`` (add_bitmasks: gt = full[2::4,
2::4]), ``mask_pred.py`` (compute_mask_prob, lovasz_loss) and
``mask_branch.py`` (the semantic targets and loss). It is fed the same head
outputs as our heads (the heads' forward is deterministic), so any
difference is in targets or loss formulas. The heads run in float32, as
in training, the reference in float64 on their outputs: 1e-5 bounds the
float32 rounding of our side.
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmdet.structures import DetDataSample
from mmdet.structures.mask import BitmapMasks
from mmdet.utils import register_all_modules
from mmengine.config import Config
from mmengine.structures import InstanceData

import embedmask_mmdet  # noqa: F401

BASE = Path(__file__).resolve().parents[3] / 'configs' / '_base_' / \
    'models' / 'embedmask_r50_fpn.py'
NUM_CLASSES = 3
IN_CH = 16
STRIDES = [8, 16, 32, 64, 128]
SIZES = [[-1, 64], [64, 128], [128, 256], [256, 512], [512, 1e8]]
H, W = 128, 160
INF = 100000000


# ----------------------------------------------------- the authors' formulas
def sigmoid_focal_loss(inputs, targets, alpha=0.25, gamma=2.):
    p = torch.sigmoid(inputs)
    ce_loss = F.binary_cross_entropy_with_logits(inputs, targets,
                                                 reduction='none')
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce_loss * ((1 - p_t) ** gamma)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * loss).sum()


def compute_locations(h, w, stride):
    shifts_x = torch.arange(0, w * stride, step=stride, dtype=torch.float64)
    shifts_y = torch.arange(0, h * stride, step=stride, dtype=torch.float64)
    shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing='ij')
    return torch.stack((shift_x.reshape(-1), shift_y.reshape(-1)),
                       dim=1) + stride // 2


def get_sample_region(boxes, num_loc_list, loc_xs, loc_ys, bitmasks,
                      radius=1.5):
    _, h, w = bitmasks.size()
    ys = torch.arange(0, h, dtype=torch.float64)
    xs = torch.arange(0, w, dtype=torch.float64)
    m00 = bitmasks.sum(dim=-1).sum(dim=-1).clamp(min=1e-6)
    m10 = (bitmasks * xs).sum(dim=-1).sum(dim=-1)
    m01 = (bitmasks * ys[:, None]).sum(dim=-1).sum(dim=-1)
    center_x, center_y = m10 / m00, m01 / m00
    num_gts, k = boxes.shape[0], len(loc_xs)
    boxes = boxes[None].expand(k, num_gts, 4)
    center_x = center_x[None].expand(k, num_gts)
    center_y = center_y[None].expand(k, num_gts)
    center_gt = boxes.new_zeros(boxes.shape)
    beg = 0
    for level, num_loc in enumerate(num_loc_list):
        end = beg + num_loc
        stride = STRIDES[level] * radius
        xmin, ymin = center_x[beg:end] - stride, center_y[beg:end] - stride
        xmax, ymax = center_x[beg:end] + stride, center_y[beg:end] + stride
        b = boxes[beg:end]
        center_gt[beg:end, :, 0] = torch.where(xmin > b[..., 0], xmin, b[..., 0])
        center_gt[beg:end, :, 1] = torch.where(ymin > b[..., 1], ymin, b[..., 1])
        center_gt[beg:end, :, 2] = torch.where(xmax > b[..., 2], b[..., 2], xmax)
        center_gt[beg:end, :, 3] = torch.where(ymax > b[..., 3], b[..., 3], ymax)
        beg = end
    left = loc_xs[:, None] - center_gt[..., 0]
    right = center_gt[..., 2] - loc_xs[:, None]
    top = loc_ys[:, None] - center_gt[..., 1]
    bottom = center_gt[..., 3] - loc_ys[:, None]
    return torch.stack((left, top, right, bottom), -1).min(-1)[0] > 0


def compute_targets(locations, bboxes, classes, bitmasks_full, num_loc_list,
                    size_ranges):
    xs, ys = locations[:, 0], locations[:, 1]
    area = (bboxes[:, 2] - bboxes[:, 0]) * (bboxes[:, 3] - bboxes[:, 1])
    l = xs[:, None] - bboxes[:, 0][None]  # noqa: E741
    t = ys[:, None] - bboxes[:, 1][None]
    r = bboxes[:, 2][None] - xs[:, None]
    b = bboxes[:, 3][None] - ys[:, None]
    reg_targets = torch.stack([l, t, r, b], dim=2)
    is_in_boxes = get_sample_region(bboxes, num_loc_list, xs, ys,
                                    bitmasks_full)
    max_reg = reg_targets.max(dim=2)[0]
    is_cared = (max_reg >= size_ranges[:, [0]]) & \
        (max_reg <= size_ranges[:, [1]])
    loc_to_area = area[None].repeat(len(locations), 1)
    loc_to_area[is_in_boxes == 0] = INF
    loc_to_area[is_cared == 0] = INF
    min_area, gt_inds = loc_to_area.min(dim=1)
    reg_targets = reg_targets[range(len(locations)), gt_inds]
    labels = classes[gt_inds]
    labels[min_area == INF] = NUM_CLASSES
    return labels, reg_targets, gt_inds


def compute_ious(pred, target):
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    target_aera = (tl + tr) * (tt + tb)
    pred_aera = (pl + pr) * (pt + pb)
    w_i = torch.min(pl, tl) + torch.min(pr, tr)
    h_i = torch.min(pb, tb) + torch.min(pt, tt)
    ac_uion = (torch.max(pl, tl) + torch.max(pr, tr)) * \
        (torch.max(pb, tb) + torch.max(pt, tt))
    area_i = w_i * h_i
    area_u = target_aera + pred_aera - area_i
    ious = (area_i + 1.0) / (area_u + 1.0)
    return ious, ious - (ac_uion - area_u) / ac_uion


def compute_ctrness_targets(reg_targets):
    lr, tb = reg_targets[:, [0, 2]], reg_targets[:, [1, 3]]
    return torch.sqrt((lr.min(dim=-1)[0] / lr.max(dim=-1)[0]) *
                      (tb.min(dim=-1)[0] / tb.max(dim=-1)[0]))


def aligned_bilinear(tensor, factor):
    h, w = tensor.size()[2:]
    tensor = F.pad(tensor, pad=(0, 1, 0, 1), mode='replicate')
    oh, ow = factor * h + 1, factor * w + 1
    tensor = F.interpolate(tensor, size=(oh, ow), mode='bilinear',
                           align_corners=True)
    tensor = F.pad(tensor, pad=(factor // 2, 0, factor // 2, 0),
                   mode='replicate')
    return tensor[:, :, :oh - 1, :ow - 1]


def lovasz_grad(gt_sorted):
    p = len(gt_sorted)
    gts = gt_sorted.sum()
    intersection = gts - gt_sorted.double().cumsum(0)
    union = gts + (1 - gt_sorted.double()).cumsum(0)
    jaccard = 1. - intersection / union
    if p > 1:
        jaccard[1:p] = jaccard[1:p] - jaccard[0:-1]
    return jaccard


def lovasz_hinge(logits, labels):
    signs = 2. * labels.double() - 1.
    errors = 1. - logits * signs
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    return torch.dot(F.relu(errors_sorted), lovasz_grad(labels[perm]))


def mask_logits(prob):
    x = torch.clamp(prob.flatten(1), min=1e-6, max=1 - 1e-6)
    return torch.log(x) - torch.log(1 - x)


def authors_losses(outs, pixel_raw, sem_logits, gts, embed_dim):
    """The authors' loss dict and mask-loss inputs from the head outputs."""
    cls_scores, bbox_preds, ctrs, params = outs
    num_imgs = cls_scores[0].size(0)
    shapes = [c.shape[-2:] for c in cls_scores]
    locs = [compute_locations(h, w, s) for (h, w), s in zip(shapes, STRIDES)]
    num_loc_list = [len(loc) for loc in locs]
    locations = torch.cat(locs)
    size_ranges = torch.cat([
        torch.tensor(SIZES[i], dtype=torch.float64)[None].expand(n, 2)
        for i, n in enumerate(num_loc_list)])
    level_stride = torch.cat([torch.full((n, ), float(s), dtype=torch.float64)
                              for n, s in zip(num_loc_list, STRIDES)])

    def flat(maps, i):  # image i, levels concatenated, (P, C)
        return torch.cat([m[i].permute(1, 2, 0).reshape(-1, m.size(1))
                          for m in maps])

    all_labels, all_reg, all_cls, all_box, all_ctr, mask_in = \
        [], [], [], [], [], []
    for i, (bboxes, classes, full) in enumerate(gts):
        labels, reg, gt_inds = compute_targets(locations, bboxes, classes,
                                               full, num_loc_list, size_ranges)
        reg = reg / level_stride[:, None]
        all_labels.append(labels)
        all_reg.append(reg)
        all_cls.append(flat(cls_scores, i))
        all_box.append(flat(bbox_preds, i))
        all_ctr.append(flat(ctrs, i)[:, 0])
        pos = (labels != NUM_CLASSES).nonzero()[:, 0]
        # EmbedMask: q = conv + location / 100 on the 2 spatial channels
        top = flat(params, i)[pos]
        q = top[:, :embed_dim].clone()
        q[:, :2] += locations[pos] / 100.
        s = top[:, embed_dim:]
        pix = pixel_raw[i].clone()
        pix[:2] += compute_locations(*pix.shape[-2:], 8).t().reshape(
            2, *pix.shape[-2:]) / 100.
        pix = pix.permute(1, 2, 0)[None]
        prob = torch.exp(-torch.sum((pix - q[:, None, None]) ** 2 *
                                    s[:, None, None], dim=3))
        prob = aligned_bilinear(prob[:, None], 2)[:, 0]
        gt_bitmasks = full[:, 2::4, 2::4][gt_inds[pos]]
        mask_in.append((mask_logits(prob), gt_bitmasks.flatten(1)))
    labels, reg = torch.cat(all_labels), torch.cat(all_reg)
    logits_pred = torch.cat(all_cls)
    pos_inds = (labels != NUM_CLASSES).nonzero()[:, 0]
    num_pos_avg = max(float(len(pos_inds)), 1.0)
    class_target = torch.zeros_like(logits_pred)
    class_target[pos_inds, labels[pos_inds]] = 1
    losses = dict(loss_cls=sigmoid_focal_loss(logits_pred, class_target) /
                  num_pos_avg)
    reg_pos = reg[pos_inds]
    ious, gious = compute_ious(torch.cat(all_box)[pos_inds], reg_pos)
    ctr_t = compute_ctrness_targets(reg_pos)
    losses['loss_bbox'] = ((1 - gious) * ctr_t).sum() / max(
        ctr_t.sum().item(), 1e-6)
    losses['loss_centerness'] = F.binary_cross_entropy_with_logits(
        torch.cat(all_ctr)[pos_inds], ctr_t, reduction='sum') / num_pos_avg
    logits = torch.cat([m[0] for m in mask_in])
    targets = torch.cat([m[1] for m in mask_in])
    losses['loss_mask'] = torch.stack(
        [lovasz_hinge(x, t) for x, t in zip(logits, targets)]).mean()
    # semantic: class + 1 of the smallest mask (pixel count) at [4::8, 4::8]
    sem_targets = []
    for bboxes, classes, full in gts:
        areas = full.sum(dim=-1).sum(dim=-1)[:, None, None].repeat(1, H, W)
        areas[full == 0] = INF
        min_areas, inds = areas.permute(1, 2, 0).reshape(H * W, -1).min(dim=1)
        t = classes[inds] + 1
        t[min_areas == INF] = 0
        sem_targets.append(t.reshape(H, W))
    sem_targets = torch.stack(sem_targets)[:, None, 4::8, 4::8]
    class_range = torch.arange(NUM_CLASSES)[:, None, None] + 1
    one_hot = (sem_targets == class_range).double()
    num_pos = (one_hot > 0).sum().double().clamp(min=1.0)
    losses['loss_semantic'] = sigmoid_focal_loss(sem_logits, one_hot) / num_pos
    return losses, labels, reg, logits, targets, num_imgs


# ---------------------------------------------------------------- the batch
def ellipse(cx, cy, rx, ry, angle=0.):
    yy, xx = np.mgrid[0:H, 0:W]
    c, s = np.cos(angle), np.sin(angle)
    u = ((xx + .5 - cx) * c + (yy + .5 - cy) * s) / rx
    v = (-(xx + .5 - cx) * s + (yy + .5 - cy) * c) / ry
    return (u * u + v * v <= 1).astype(np.uint8)


def sample(masks, labels):
    masks = np.stack(masks)
    boxes = []
    for m in masks:  # tight boxes, as COCO's
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    s = DetDataSample(metainfo=dict(img_shape=(H, W), pad_shape=(H, W),
                                    batch_input_shape=(H, W),
                                    ori_shape=(H, W), scale_factor=(1., 1.)))
    s.gt_instances = InstanceData(
        bboxes=torch.tensor(boxes, dtype=torch.float32),
        labels=torch.tensor(labels), masks=BitmapMasks(masks, H, W))
    return s


def heads():
    register_all_modules()
    model = Config.fromfile(BASE).model
    bbox_cfg, mask_cfg = model.bbox_head, model.mask_head
    bbox_cfg.update(num_classes=NUM_CLASSES, in_channels=IN_CH,
                    feat_channels=IN_CH, stacked_convs=1, proposal_channels=8,
                    norm_cfg=dict(type='GN', num_groups=4, requires_grad=True))
    mask_cfg.update(num_classes=NUM_CLASSES, in_channels=IN_CH,
                    semantic_channels=8,
                    pixel_branch=dict(type='p3p5_fusion', feat_channels=8,
                                      num_stacked_convs=2))
    torch.manual_seed(0)
    bbox_head, mask_head = MODELS.build(bbox_cfg), MODELS.build(mask_cfg)
    for head in (bbox_head, mask_head):
        head.init_weights()
    with torch.no_grad():  # predictions away from the init's constants
        for conv in (bbox_head.conv_reg, bbox_head.conv_centerness,
                     bbox_head.embedding_head.embed_conv,
                     bbox_head.embedding_head.margin_conv,
                     mask_head.pixel_branch.conv_pred):
            conv.weight.normal_(0, 0.3)
    return bbox_head, mask_head


def test_targets_losses_and_mask_inputs_equal_the_authors():
    bbox_head, mask_head = heads()
    samples = [
        sample([ellipse(60, 50, 30, 18, .4), ellipse(120, 90, 14, 25),
                ellipse(40, 100, 9, 7), ellipse(64, 56, 12, 10)],
               [0, 2, 1, 1]),
        sample([ellipse(80, 64, 60, 40, -.3), ellipse(30, 30, 6, 10)],
               [2, 0])]
    g = torch.Generator().manual_seed(3)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    x = tuple(torch.randn(2, IN_CH, h, w, generator=g) for h, w in sizes)
    # the heads run in float32 as in training; the reference takes their
    # outputs in float64
    with torch.no_grad():
        outs = [[t.double() for t in o] for o in bbox_head(x)]
        pixel_raw = mask_head.pixel_branch(x).double()
        sem_logits = mask_head.semantic_logits(
            mask_head.semantic_convs(x[0])).double()
    gts = [(s.gt_instances.bboxes.double(), s.gt_instances.labels,
            torch.from_numpy(s.gt_instances.masks.masks).double())
           for s in samples]
    ref, ref_labels, ref_reg, ref_logits, ref_targets, _ = authors_losses(
        outs, pixel_raw, sem_logits, gts, bbox_head.embed_dim)

    # our FCOS targets
    points = bbox_head.prior_generator.grid_priors(
        sizes, device='cpu')
    labels, bbox_targets = bbox_head.get_targets(
        points, [s.gt_instances for s in samples])[:2]
    per_img = [torch.cat([lv.view(2, -1, *lv.shape[1:])[i] for lv in levels])
               for levels in (labels, bbox_targets) for i in range(2)]
    ours_labels = torch.cat(per_img[:2])
    ours_reg = torch.cat(per_img[2:])
    assert torch.equal(ours_labels, ref_labels)
    pos = ref_labels != NUM_CLASSES
    assert 20 < int(pos.sum()) < 500  # positives on several levels, no cap
    torch.testing.assert_close(ours_reg[pos].double(), ref_reg[pos], rtol=1e-5,
                               atol=1e-5)

    # our losses, with the mask loss's inputs recorded
    seen = {}
    inner = mask_head.loss_mask.forward

    def record(pred, target, *args, **kwargs):
        seen.update(logits=pred, targets=target)
        return inner(pred, target, *args, **kwargs)

    mask_head.loss_mask.forward = record
    losses = dict(bbox_head.loss(x, samples))
    losses.update(mask_head.loss(
        x, samples, positive_infos=bbox_head.get_positive_infos()))
    torch.testing.assert_close(seen['logits'].flatten(1).double(), ref_logits,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(seen['targets'].flatten(1).double(), ref_targets)
    assert set(losses) == set(ref)
    for name, value in ref.items():
        torch.testing.assert_close(losses[name].double(), value, rtol=1e-5,
                                   atol=1e-7, msg=name)
        assert value > 0, name


def test_a_gt_empty_after_clipping_changes_nothing():
    """AdelaiDet drops gts whose box is empty after resizing and clipping
    (detectron2's filter_empty_instances: width or height <= 1e-5); we keep
    them, because such a gt takes no location (FCOS needs l, t, r, b > 0 and
    the centre region strictly inside the box) and has no mask pixel: every
    target and loss is the one without it."""
    bbox_head, mask_head = heads()
    masks = [ellipse(60, 50, 30, 18, .4), ellipse(120, 90, 14, 25)]
    kept = sample(masks, [0, 2])
    degenerate = sample(masks + [ellipse(60, 50, 30, 18, .4)], [0, 2, 1])
    # an object cut away by the crop: zero-width box at the border, no pixel
    degenerate.gt_instances.bboxes[2] = torch.tensor([160., 40., 160., 90.])
    degenerate.gt_instances.masks = BitmapMasks(
        np.concatenate([degenerate.gt_instances.masks.masks[:2],
                        np.zeros((1, H, W), np.uint8)]), H, W)
    g = torch.Generator().manual_seed(5)
    sizes = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
    x = tuple(torch.randn(1, IN_CH, h, w, generator=g) for h, w in sizes)
    results = []
    for s in (kept, degenerate):
        torch.manual_seed(0)
        losses = dict(bbox_head.loss(x, [s]))
        infos = bbox_head.get_positive_infos()
        losses.update(mask_head.loss(x, [s], positive_infos=infos))
        results.append((losses, infos[0]))
    (a, info_a), (b, info_b) = results
    assert torch.equal(info_a.pos_inds, info_b.pos_inds)
    assert torch.equal(info_a.pos_assigned_gt_inds, info_b.pos_assigned_gt_inds)
    assert set(a) == set(b)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
