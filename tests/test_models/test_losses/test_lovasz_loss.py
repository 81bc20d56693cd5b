"""Binary Lovász hinge (``lovasz_hinge``) and the ``LovaszHingeLoss`` module,
against references written independently of the sorted-greedy code."""
import itertools
from fractions import Fraction

import pytest
import torch

import embedmask_mmdet  # noqa: F401  (registers LovaszHingeLoss)
from embedmask_mmdet.models.losses.lovasz_hinge_loss import (LovaszHingeLoss,
                                                             lovasz_grad,
                                                             lovasz_hinge)
from embedmask_mmdet.models.utils import mask_logit, mask_probability
from mmdet.registry import MODELS



def jaccard_set_loss(mistakes: set, gt: set) -> Fraction:
    """Δ_J(M) = |M| / |gt ∪ M|, Δ_J(∅) = 0 (Berman et al., eq. 5)."""
    if not mistakes:
        return Fraction(0)
    return Fraction(len(mistakes), len(gt | mistakes))


def errors_of(logits, labels):
    """m_i = relu(1 - logit_i * sign_i), sign = +1 for fg, -1 for bg."""
    return [max(0., 1. - float(z) * (1. if y else -1.))
            for z, y in zip(logits, labels)]


def lovasz_by_level_sets(logits, labels) -> float:
    """Lovász extension as an integral over thresholds (Lovász 1983):
    f(m) = ∫_0^∞ Δ_J({i : m_i >= t}) dt, exact because the level set is
    constant between consecutive distinct values of m."""
    m = errors_of(logits, labels)
    gt = {i for i, y in enumerate(labels) if y}
    levels = sorted({v for v in m if v > 0}, reverse=True) + [0.]
    total = 0.
    for hi, lo in zip(levels[:-1], levels[1:]):
        level_set = {i for i, v in enumerate(m) if v >= hi}
        total += (hi - lo) * float(jaccard_set_loss(level_set, gt))
    return total


def lovasz_by_prefix_sets(logits, labels) -> float:
    """Sorted-greedy formula, one explicit Python prefix set at a time:
    f(m) = Σ_i m_π(i) (Δ_J({π1..πi}) - Δ_J({π1..πi-1}))."""
    m = errors_of(logits, labels)
    gt = {i for i, y in enumerate(labels) if y}
    order = sorted(range(len(m)), key=lambda i: -m[i])
    total, prefix = 0., set()
    for i in order:
        before = jaccard_set_loss(prefix, gt)
        prefix = prefix | {i}
        total += m[i] * float(jaccard_set_loss(prefix, gt) - before)
    return total


def random_case(p, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(p, generator=g, dtype=torch.float64) * 2.
    labels = torch.randint(0, 2, (p, ), generator=g)
    return logits, labels


# --------------------------------------------------------------- lovasz_hinge
@pytest.mark.parametrize('p', [1, 2, 3, 5, 7])
def test_lovasz_hinge_matches_references_random(p):
    for seed in range(25):
        logits, labels = random_case(p, seed * 10 + p)
        got = lovasz_hinge(logits[None], labels[None])
        assert got.shape == (1, )
        ref_levels = lovasz_by_level_sets(logits.tolist(), labels.tolist())
        ref_prefix = lovasz_by_prefix_sets(logits.tolist(), labels.tolist())
        assert ref_levels == pytest.approx(ref_prefix, abs=1e-12)
        assert got.item() == pytest.approx(ref_levels, abs=1e-9), (logits,
                                                                   labels)


def test_lovasz_hinge_batched_equals_per_row():
    rows = [random_case(7, s) for s in range(6)]
    logits = torch.stack([r[0] for r in rows])
    labels = torch.stack([r[1] for r in rows])
    got = lovasz_hinge(logits, labels)
    ref = [lovasz_by_level_sets(a.tolist(), b.tolist()) for a, b in rows]
    torch.testing.assert_close(got, torch.tensor(ref, dtype=torch.float64))


def full_sort_lovasz_hinge(logits, labels):
    """The textbook form: every row fully sorted."""
    labels = labels.to(logits.dtype)
    errors = 1. - logits * (2. * labels - 1.)
    errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    return (torch.relu(errors_sorted) * lovasz_grad(labels.gather(1, perm))
            ).sum(dim=1)


def test_lovasz_hinge_partial_sort_equals_full_sort_with_gradients():
    """Mostly-confident rows (under 3/4 of the errors positive) take the
    top-k path; loss and gradient equal the fully sorted form, and rows
    whose errors are all <= 0 give exactly 0."""
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, 2, (5, 400), generator=g)
    signs = 2. * labels - 1.
    logits = signs * (2. + torch.rand(5, 400, generator=g, dtype=torch.float64))
    flip = torch.rand(5, 400, generator=g) < torch.tensor(
        [0.02, 0.1, 0.3, 0., 0.05])[:, None]
    logits = torch.where(flip, -logits * torch.rand(5, 400, generator=g,
                                                    dtype=torch.float64),
                         logits)
    errors = 1. - logits * signs
    assert 0 < int((errors > 0).sum(1).max()) < 200  # top-k path
    assert int((errors[3] > 0).sum()) == 0
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = lovasz_hinge(a, labels)
    ref = full_sort_lovasz_hinge(b, labels)
    torch.testing.assert_close(got, ref)
    assert got[3].item() == 0.
    for row in (0, 1, 4):
        assert got[row].item() == pytest.approx(lovasz_by_level_sets(
            logits[row].tolist(), labels[row].tolist()), abs=1e-9)
    got.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    # no positive error anywhere: zero with a graph
    z = (signs * 5.).requires_grad_()
    out = lovasz_hinge(z, labels)
    assert torch.equal(out, torch.zeros(5, dtype=torch.float64))
    out.sum().backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_lovasz_hinge_at_binary_vertices_equals_jaccard_loss():
    """At m = indicator(M) the extension equals Δ_J(M) for every M: logit =
    sign (margin met, m = 0) or 0 (m = 1)."""
    p = 5
    for labels in [(1, 0, 1, 1, 0), (0, 0, 0, 0, 1), (1, 1, 1, 1, 1),
                   (0, 0, 0, 0, 0)]:
        gt = {i for i, y in enumerate(labels) if y}
        for bits in itertools.product((0, 1), repeat=p):
            mistakes = {i for i, b in enumerate(bits) if b}
            logits = torch.tensor([0. if b else (1. if y else -1.)
                                   for b, y in zip(bits, labels)],
                                  dtype=torch.float64)
            got = lovasz_hinge(logits[None], torch.tensor([labels])).item()
            assert got == pytest.approx(
                float(jaccard_set_loss(mistakes, gt)), abs=1e-12), (labels,
                                                                    bits)


def test_lovasz_hinge_is_piecewise_linear_between_vertices():
    """Inside one ordering region the extension is linear: the value at a
    convex combination of two errors vectors with the same order is the
    combination of the values."""
    labels = torch.tensor([[1, 0, 1, 0, 0, 1]])
    sign = (2 * labels - 1).double()
    m_a = torch.tensor([[3., 2.5, 2., 1., 0.5, 0.25]], dtype=torch.float64)
    m_b = torch.tensor([[5., 1.5, 1.2, 1.1, 0.7, 0.1]], dtype=torch.float64)
    # m = 1 - logit * sign  =>  logit = (1 - m) * sign
    f = lambda m: lovasz_hinge((1. - m) * sign, labels)  # noqa: E731
    for t in (0.2, 0.5, 0.9):
        m = (1 - t) * m_a + t * m_b
        assert f(m).item() == pytest.approx(
            ((1 - t) * f(m_a) + t * f(m_b)).item(), abs=1e-12)


def test_lovasz_hinge_all_negative_labels_is_max_error():
    # no foreground: Δ_J(M) = 1 for every non-empty M => f(m) = max(m)
    logits = torch.tensor([[-3., 0.2, -0.5, 1.5], [-2., -3., -1.5, -4.]])
    labels = torch.zeros_like(logits, dtype=torch.long)
    got = lovasz_hinge(logits, labels)
    torch.testing.assert_close(got, torch.tensor([2.5, 0.]))
    for row in range(2):
        assert got[row].item() == pytest.approx(
            lovasz_by_level_sets(logits[row].tolist(), [0] * 4))


def test_lovasz_hinge_all_positive_labels_is_mean_hinge():
    # all foreground: Δ_J(M) = |M| / P => f(m) = mean(m)
    logits = torch.tensor([[-3., 0.2, 2.5, 1.0], [5., 6., 7., 8.]])
    labels = torch.ones_like(logits, dtype=torch.long)
    got = lovasz_hinge(logits, labels)
    torch.testing.assert_close(
        got, torch.tensor([(4. + 0.8 + 0. + 0.) / 4., 0.]))


def test_lovasz_hinge_gradients():
    logits, labels = random_case(7, 3)
    logits = logits[None].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: lovasz_hinge(z, labels[None]), (logits, ))
    # gradient of the hinge: -sign_i * g_i for active errors, g from
    # Δ_J differences of explicit prefix sets
    lovasz_hinge(logits, labels[None]).sum().backward()
    m = errors_of(logits[0].tolist(), labels.tolist())
    gt = {i for i, y in enumerate(labels.tolist()) if y}
    order = sorted(range(7), key=lambda i: -m[i])
    expected, prefix = [0.] * 7, set()
    for i in order:
        before = jaccard_set_loss(prefix, gt)
        prefix = prefix | {i}
        if m[i] > 0:
            sign = 1. if labels[i] else -1.
            expected[i] = -sign * float(jaccard_set_loss(prefix, gt) - before)
    torch.testing.assert_close(logits.grad[0],
                               torch.tensor(expected, dtype=torch.float64))


def test_lovasz_grad_sums_to_jaccard_of_full_set():
    gt_sorted = torch.tensor([[1., 0., 1., 1., 0.], [0., 0., 0., 0., 0.]])
    g = lovasz_grad(gt_sorted)
    # Δ_J(all) = P / |gt ∪ all| = 1
    torch.testing.assert_close(g.sum(1), torch.ones(2))
    assert (g >= 0).all()


# --------------------------------------------------------- LovaszHingeLoss
def _instances(n=4, h=5, w=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    pred = torch.randn(n, h, w, generator=g) * 2.
    target = (torch.rand(n, h, w, generator=g) > 0.6).float()
    per_instance = lovasz_hinge(pred.reshape(n, -1), target.reshape(n, -1))
    return pred, target, per_instance


def test_module_is_registered():
    loss = MODELS.build(dict(type='LovaszHingeLoss', loss_weight=0.5))
    assert isinstance(loss, LovaszHingeLoss) and loss.loss_weight == 0.5


def test_module_reductions_weight_avg_factor_loss_weight():
    pred, target, per = _instances()
    assert (per > 0).all()
    torch.testing.assert_close(
        LovaszHingeLoss(reduction='none')(pred, target), per)
    torch.testing.assert_close(LovaszHingeLoss()(pred, target), per.mean())
    torch.testing.assert_close(
        LovaszHingeLoss(reduction='sum')(pred, target), per.sum())
    torch.testing.assert_close(
        LovaszHingeLoss(reduction='sum')(pred, target,
                                         reduction_override='none'), per)
    weight = torch.tensor([1., 0., 2., 0.5])
    torch.testing.assert_close(
        LovaszHingeLoss()(pred, target, weight=weight), (per * weight).mean())
    torch.testing.assert_close(
        LovaszHingeLoss(reduction='sum')(pred, target, weight=weight),
        (per * weight).sum())
    torch.testing.assert_close(
        LovaszHingeLoss()(pred, target, avg_factor=10.), per.sum() / 10.)
    torch.testing.assert_close(
        LovaszHingeLoss()(pred, target, weight=weight, avg_factor=3.),
        (per * weight).sum() / 3.)
    torch.testing.assert_close(
        LovaszHingeLoss(loss_weight=0.5)(pred, target), 0.5 * per.mean())
    torch.testing.assert_close(
        LovaszHingeLoss(reduction='none', loss_weight=3.)(pred, target),
        3. * per)
    with pytest.raises(ValueError, match='reduction'):
        LovaszHingeLoss(reduction='max')


def test_module_flattens_instances():
    pred, target, per = _instances(n=3, h=4, w=4)
    got = LovaszHingeLoss(reduction='none')(pred.reshape(3, 2, 8),
                                            target.reshape(3, 2, 8))
    torch.testing.assert_close(got, per)


@pytest.mark.parametrize('reduction', ['none', 'mean', 'sum'])
def test_module_zero_instances_returns_zero_with_graph(reduction):
    pred = torch.randn(0, 5, 6, requires_grad=True)
    loss = LovaszHingeLoss(reduction=reduction)(pred, torch.zeros(0, 5, 6))
    assert loss.numel() == 1 and loss.item() == 0.
    assert loss.requires_grad and loss.grad_fn is not None
    loss.sum().backward()
    assert pred.grad is not None and pred.grad.shape == pred.shape


def test_module_finite_with_probabilities_exactly_zero_and_one():
    # a 1 x 4 pixel map; proposal 0 sits on pixel 0 (p = 1 there), pixels
    # 2 and 3 are so far away that p underflows to exactly 0
    x = torch.tensor([[[0., 0.5, 1e3, 1e4]], [[0., 0., 1e3, 1e4]],
                      [[0., 0., 0., 0.]]], requires_grad=True)
    q = torch.zeros(2, 3, requires_grad=True)
    s = torch.full((2, 3), 2., requires_grad=True)
    p = mask_probability(x, q, s)
    assert (p[:, 0, 0] == 1.).all() and (p[:, 0, 2:] == 0.).all()
    logits = mask_logit(p, 1e-6)
    # instance 0 wants pixels 0 and 1, instance 1 the far ones (all wrong)
    target = torch.tensor([[[1., 1., 0., 0.]], [[0., 0., 1., 1.]]])
    loss = LovaszHingeLoss()(logits, target)
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    for t in (x, q, s):
        assert torch.isfinite(t.grad).all()


def test_lovasz_hinge_full_sort_path_gradient_and_gradcheck():
    """Rows with most errors positive take the full sort; the gradient
    computed in the forward equals autograd's through the sorted form and
    passes gradcheck (random float64 logits have no ties)."""
    g = torch.Generator().manual_seed(5)
    labels = torch.randint(0, 2, (4, 60), generator=g)
    logits = torch.randn(4, 60, generator=g, dtype=torch.float64) * 0.3
    errors = 1. - logits * (2. * labels - 1.)
    assert 4 * int((errors > 0).sum(1).max()) >= 3 * 60  # full-sort path
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    got = lovasz_hinge(a, labels)
    ref = full_sort_lovasz_hinge(b, labels)
    torch.testing.assert_close(got, ref)
    weights = torch.tensor([1., -2., 0.5, 3.], dtype=torch.float64)
    (got * weights).sum().backward()
    (ref * weights).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert torch.autograd.gradcheck(lambda t: lovasz_hinge(t, labels),
                                    (logits.clone().requires_grad_(), ))
    with torch.no_grad():
        torch.testing.assert_close(lovasz_hinge(logits, labels), ref.detach())


@pytest.mark.parametrize('fill', [5., -5.])
def test_lovasz_hinge_propagates_nan(fill):
    """A NaN logit gives a NaN loss on the top-k path and on the
    no-positive-error path alike, so the detector's non-finite guard sees
    it."""
    labels = torch.tensor([[1, 0, 1, 0]])
    logits = (2. * labels - 1.) * fill
    logits[0, 1] = float('nan')
    assert torch.isnan(lovasz_hinge(logits, labels)).all()
