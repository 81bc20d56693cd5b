"""FusedFocalLoss against mmdet's FocalLoss: same values and gradients, fewer
tensors kept for the backward."""
import pytest
import torch
from mmdet.registry import MODELS

import embedmask_mmdet  # noqa: F401  (registers the loss)


def _pair(**kwargs):
    cfg = dict(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)
    cfg.update(kwargs)
    return (MODELS.build(dict(type='FocalLoss', **cfg)),
            MODELS.build(dict(type='FusedFocalLoss', **cfg)))


@pytest.mark.parametrize('weight', [None, 'per_sample', 'per_element'])
@pytest.mark.parametrize('avg_factor', [None, 17.])
@pytest.mark.parametrize('reduction', ['mean', 'sum'])
def test_matches_mmdet_value_and_gradient(weight, avg_factor, reduction):
    torch.manual_seed(0)
    ref, fused = _pair(reduction=reduction, gamma=1.5, alpha=0.3,
                       loss_weight=2.)
    # large logits too: the log terms must stay finite
    x = (torch.randn(300, 7, dtype=torch.float64) * 6).requires_grad_()
    labels = torch.randint(0, 8, (300, ))  # 7 = background
    w = None
    if weight == 'per_sample':
        w = torch.rand(300, dtype=torch.float64)
    elif weight == 'per_element':
        w = torch.rand(300, 7, dtype=torch.float64)
    if reduction == 'sum' and avg_factor is not None:
        for loss in (ref, fused):  # mmdet's rule, kept
            with pytest.raises(ValueError, match='avg_factor'):
                loss(x, labels, w, avg_factor=avg_factor)
        return
    a = ref(x, labels, w, avg_factor=avg_factor)
    ga, = torch.autograd.grad(a, x)
    b = fused(x, labels, w, avg_factor=avg_factor)
    gb, = torch.autograd.grad(b, x)
    torch.testing.assert_close(b, a)
    torch.testing.assert_close(gb, ga)


def test_gradcheck_and_falls_back_for_one_hot_targets():
    ref, fused = _pair()
    x = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 4, (20, ))
    assert torch.autograd.gradcheck(lambda x: fused(x, labels, avg_factor=3.),
                                    (x, ))
    soft = torch.rand(20, 3, dtype=torch.float64)
    torch.testing.assert_close(fused(x, soft), ref(x, soft))
    torch.testing.assert_close(fused(x, labels, reduction_override='none'),
                               ref(x, labels, reduction_override='none'))


def test_keeps_one_tensor_for_backward():
    ref, fused = _pair()
    x = torch.randn(500, 80, requires_grad=True)
    labels = torch.randint(0, 81, (500, ))

    def saved_bytes(loss_fn):
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = \
                t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss_fn(x, labels, avg_factor=10.)
        return sum(storages.values())

    assert saved_bytes(fused) == x.numel() * 4
    assert saved_bytes(ref) >= 3 * x.numel() * 4


def test_bad_weight_shape_names_the_loss():
    _, fused = _pair()
    with pytest.raises(ValueError, match='FusedFocalLoss: weight'):
        fused(torch.randn(5, 3), torch.zeros(5, dtype=torch.long),
              torch.ones(4))
