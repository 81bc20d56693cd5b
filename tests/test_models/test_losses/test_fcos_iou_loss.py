"""FCOSIoULoss against the authors' IOULoss (AdelaiDet 94a9b7c,
``adet/utils/comm.py`` compute_ious and ``adet/layers/iou_loss.py``),
transcribed below on (l, t, r, b) in float64."""
import pytest
import torch
from mmdet.registry import MODELS

import embedmask_mmdet  # noqa: F401  (registers the loss)


def authors_iou_loss(pred, target, loc_loss_type, weight):
    """The authors' compute_ious + IOULoss.forward on (l, t, r, b)."""
    pl, pt, pr, pb = pred.unbind(1)
    tl, tt, tr, tb = target.unbind(1)
    target_aera = (tl + tr) * (tt + tb)
    pred_aera = (pl + pr) * (pt + pb)
    w_intersect = torch.min(pl, tl) + torch.min(pr, tr)
    h_intersect = torch.min(pb, tb) + torch.min(pt, tt)
    g_w_intersect = torch.max(pl, tl) + torch.max(pr, tr)
    g_h_intersect = torch.max(pb, tb) + torch.max(pt, tt)
    ac_uion = g_w_intersect * g_h_intersect
    area_intersect = w_intersect * h_intersect
    area_union = target_aera + pred_aera - area_intersect
    ious = (area_intersect + 1.0) / (area_union + 1.0)
    gious = ious - (ac_uion - area_union) / ac_uion
    if loc_loss_type == 'iou':
        losses = -torch.log(ious)
    elif loc_loss_type == 'linear_iou':
        losses = 1 - ious
    else:
        losses = 1 - gious
    return (losses * weight).sum()


def decode(points, d):
    """mmdet's DistancePointBBoxCoder.decode without clipping."""
    return torch.stack([points[:, 0] - d[:, 0], points[:, 1] - d[:, 1],
                        points[:, 0] + d[:, 2], points[:, 1] + d[:, 3]], 1)


def fcos_batch(n=500, seed=0):
    """Stride-normalised distances as an FCOS head sees them: small boxes
    (a fraction of a stride) to large ones, exact zeros (relu'd
    predictions), points over an 800x1333 image."""
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, 4, generator=g, dtype=torch.float64) * 8 + 0.05
    pred = (torch.rand(n, 4, generator=g, dtype=torch.float64) * 10 - 1
            ).clamp(min=0)
    points = torch.rand(n, 2, generator=g, dtype=torch.float64) * \
        torch.tensor([1333., 800.], dtype=torch.float64)
    weight = torch.rand(n, generator=g, dtype=torch.float64)
    return pred, target, points, weight


@pytest.mark.parametrize('loss_type', ['iou', 'linear_iou', 'giou'])
def test_equals_the_authors_loss_value_and_gradient(loss_type):
    pred, target, points, weight = fcos_batch()
    pred.requires_grad_()
    denorm = weight.sum()
    ref = authors_iou_loss(pred, target, loss_type, weight) / denorm
    g_ref, = torch.autograd.grad(ref, pred)
    loss = MODELS.build(dict(type='FCOSIoULoss', loss_type=loss_type))
    # float64 in, float64 out (only reduced-precision inputs are cast, to
    # float32)
    ours = loss(decode(points, pred).double(), decode(points, target),
                weight=weight, avg_factor=denorm)
    g_ours, = torch.autograd.grad(ours, pred)
    torch.testing.assert_close(ours.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_ours.double(), g_ref, rtol=1e-5, atol=1e-7)


def test_the_plus_one_is_what_differs_from_mmdet_giou():
    pred, target, points, weight = fcos_batch()
    ours = MODELS.build(dict(type='FCOSIoULoss', loss_type='giou'))
    no_smooth = MODELS.build(dict(type='FCOSIoULoss', loss_type='giou',
                                  smooth=0.))
    mmdet = MODELS.build(dict(type='GIoULoss', eps=1e-12))
    args = (decode(points, pred), decode(points, target))
    kwargs = dict(weight=weight, avg_factor=weight.sum())
    torch.testing.assert_close(no_smooth(*args, **kwargs).double(),
                               mmdet(*args, **kwargs).double(),
                               rtol=1e-6, atol=1e-6)
    # small boxes (stride units): the +1 moves the loss visibly
    # (about 0.01 on this batch's mean loss)
    assert (ours(*args, **kwargs) - mmdet(*args, **kwargs)).abs() > 5e-3


def test_float32_under_bf16_autocast():
    pred, target, points, weight = fcos_batch(100)
    loss = MODELS.build(dict(type='FCOSIoULoss'))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = loss(decode(points, pred).float(), decode(points, target).float(),
                   weight=weight.float(), avg_factor=float(weight.sum()))
    assert out.dtype == torch.float32
    ref = authors_iou_loss(pred, target, 'giou', weight) / weight.sum()
    # float32 decoding around pixel points up to 1333: ~1e-4 px per side
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('cfg,key', [(dict(loss_type='diou'), 'loss_type'),
                                     (dict(smooth=-1.), 'smooth')])
def test_bad_settings_are_refused(cfg, key):
    with pytest.raises(ValueError, match=key):
        MODELS.build(dict(type='FCOSIoULoss', **cfg))
