"""The EmbedMask formulas of ``embedmask_mmdet.models.utils.embedding``."""
import math

import pytest
import torch
from mmdet.models.task_modules.prior_generators import MlvlPointGenerator

from embedmask_mmdet.models.utils import (location_map, mask_logit,
                                          mask_probability, prior_margin_bias,
                                          proposal_margin, spatial_embedding)
from embedmask_mmdet.models.utils.embedding import MAX_LOG_MARGIN



def naive_mask_probability(pixel_embed, proposal_embed, margin):
    """p_ik = exp(-sum_d s_kd (x_id - q_kd)^2), computed literally in float64
    on the full (N, D, H, W) difference tensor."""
    x = pixel_embed.double()[None]                          # 1, D, H, W
    q = proposal_embed.double()[:, :, None, None]           # N, D, 1, 1
    s = margin.double()[:, :, None, None]                   # N, D, 1, 1
    return torch.exp(-(s * (x - q)**2).sum(dim=1))          # N, H, W


# ----------------------------------------------------------- mask_probability
def test_mask_probability_hand_computed_d2():
    # D = 2, one proposal q = (1, 2), s = (0.5, 2); a 1 x 3 pixel map.
    q = torch.tensor([[1., 2.]])
    s = torch.tensor([[0.5, 2.]])
    # pixels x = (1, 2), (3, 2), (2, 1.5)
    x = torch.tensor([[[1., 3., 2.]],          # dimension 1, (1, H=1, W=3)
                      [[2., 2., 1.5]]])        # dimension 2
    p = mask_probability(x, q, s)
    assert p.shape == (1, 1, 3)
    expected = torch.tensor([
        # exp(-(0.5 * 0^2 + 2 * 0^2)) = 1
        1.0,
        # exp(-(0.5 * (3-1)^2 + 2 * (2-2)^2)) = exp(-2)
        math.exp(-2.0),
        # exp(-(0.5 * (2-1)^2 + 2 * (1.5-2)^2)) = exp(-(0.5 + 0.5)) = exp(-1)
        math.exp(-1.0),
    ])
    torch.testing.assert_close(p[0, 0], expected, atol=1e-6, rtol=0)
    # values written out, in case exp() itself were the thing under test
    torch.testing.assert_close(
        p[0, 0], torch.tensor([1.0, 0.1353352832, 0.3678794412]),
        atol=1e-6, rtol=0)


def test_mask_probability_matches_naive_large_coordinates():
    g = torch.Generator().manual_seed(0)
    d, h, w, n, k = 16, 24, 31, 40, 4
    # pixels in k clusters (objects) with coordinates in [0, 13]
    centres = 0.5 + torch.rand(k, d, generator=g) * 12.
    assign = torch.randint(0, k, (h * w, ), generator=g)
    x = (centres[assign] + 0.15 * torch.randn(h * w, d, generator=g))
    x = x.clamp(0., 13.).T.reshape(d, h, w)
    # proposals near the clusters, a few anywhere; margins from 0.05 to 50
    q = centres[torch.randint(0, k, (n, ), generator=g)] \
        + 0.1 * torch.randn(n, d, generator=g)
    q[:5] = torch.rand(5, d, generator=g) * 13.
    smax = torch.logspace(math.log10(0.05), math.log10(50.), n)
    s = torch.rand(n, d, generator=g) * smax[:, None]
    s[-1, 0] = 50.
    p = mask_probability(x, q, s)
    ref = naive_mask_probability(x, q, s)
    assert p.shape == (n, h, w) and p.dtype == torch.float32
    assert (p >= 0).all() and (p <= 1).all()
    # the test must exercise non-trivial probabilities
    assert ((ref > 0.1) & (ref < 0.9)).sum() > 50
    torch.testing.assert_close(p.double(), ref, atol=1e-4, rtol=0)


def test_mask_probability_gradients_match_naive():
    g = torch.Generator().manual_seed(1)
    d, h, w, n = 4, 5, 6, 3
    x = (torch.rand(d, h, w, generator=g, dtype=torch.float64) * 13.)
    q = x.reshape(d, -1)[:, :n].T + 0.2 * torch.randn(
        n, d, generator=g, dtype=torch.float64)
    s = torch.rand(n, d, generator=g, dtype=torch.float64) * 3. + 0.1
    weight = torch.rand(n, h, w, generator=g, dtype=torch.float64)
    grads = []
    for fn in (mask_probability, naive_mask_probability):
        xs, qs, ss = (t.clone().requires_grad_() for t in (x, q, s))
        (fn(xs, qs, ss) * weight).sum().backward()
        grads.append((xs.grad, qs.grad, ss.grad))
    # p is computed in float32 by design (whatever the input dtype):
    # float32 tolerances against the float64 formula
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_mask_probability_batched_matches_naive_per_image():
    """A leading batch dimension: each image against its own proposals
    (values and gradients against the float64 formula), padding proposals
    (s = 0) give p = 1 and no gradient to the real ones."""
    g = torch.Generator().manual_seed(3)
    b, d, h, w, n = 3, 4, 5, 6, 4
    x = torch.rand(b, d, h, w, generator=g, dtype=torch.float64) * 13.
    q = torch.stack([x[i].reshape(d, -1)[:, :n].T for i in range(b)]) + \
        0.2 * torch.randn(b, n, d, generator=g, dtype=torch.float64)
    s = torch.rand(b, n, d, generator=g, dtype=torch.float64) * 3. + 0.1
    s[2, -1] = 0.  # image 2 has one proposal fewer: padding
    weight = torch.rand(b, n, h, w, generator=g, dtype=torch.float64)
    xs, qs, ss = (t.clone().requires_grad_() for t in (x, q, s))
    p = mask_probability(xs, qs, ss)
    assert p.shape == (b, n, h, w) and p.dtype == torch.float32
    assert (p[2, -1] == 1).all()
    (p * weight).sum().backward()
    for i in range(b):
        xr, qr, sr = (t[i].clone().requires_grad_() for t in (x, q, s))
        ref = naive_mask_probability(xr, qr, sr)
        torch.testing.assert_close(p[i].double(), ref.detach(), atol=1e-6,
                                   rtol=0)
        (ref * weight[i]).sum().backward()
        for got, want in ((xs.grad[i], xr.grad), (qs.grad[i], qr.grad),
                          (ss.grad[i], sr.grad)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # float32 inputs: the batch gives each image's own result bit for bit
    xf, qf, sf = x.float(), q.float(), s.float()
    batched = mask_probability(xf, qf, sf)
    for i in range(b):
        assert torch.equal(batched[i], mask_probability(xf[i], qf[i], sf[i]))


# ---------------------------------------------------------- prior_margin_bias
@pytest.mark.parametrize('m', [0.5, 2.0, 5.0])
def test_prior_margin_bias_gives_half_at_distance_m(m):
    d = 8
    bias = prior_margin_bias(m)
    assert bias == pytest.approx(math.log(math.log(2.) / m**2))
    s = proposal_margin(torch.full((1, d), bias))
    direction = torch.randn(d, generator=torch.Generator().manual_seed(2))
    direction = direction / direction.norm()
    q = torch.rand(1, d) * 5.
    # pixel 0 at distance m, pixel 1 at q itself, pixel 2 at distance 2m
    x = torch.stack([q[0] + m * direction, q[0], q[0] + 2 * m * direction],
                    dim=1)[:, None, :]  # D, 1, 3
    p = mask_probability(x, q, s)[0, 0]
    torch.testing.assert_close(p, torch.tensor([0.5, 1.0, 0.5**4]),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize('m', [0., -1.])
def test_prior_margin_bias_rejects_non_positive(m):
    with pytest.raises(ValueError, match='prior_margin'):
        prior_margin_bias(m)


# ----------------------------------------------------------------- mask_logit
def test_mask_logit_finite_at_zero_and_one():
    eps = 1e-6
    p = torch.tensor([0., 1., 0.5, 0.25], requires_grad=True)
    logit = mask_logit(p, eps)
    assert torch.isfinite(logit).all()
    limit = math.log((1 - eps) / eps)
    torch.testing.assert_close(
        logit.detach(), torch.tensor([-limit, limit, 0., math.log(1 / 3)]),
        atol=1e-5, rtol=1e-5)
    logit.sum().backward()
    assert torch.isfinite(p.grad).all()
    # d logit / dp = 1 / (p (1 - p)) inside the clamp
    assert p.grad[2].item() == pytest.approx(4., rel=1e-5)
    assert p.grad[3].item() == pytest.approx(1. / (0.25 * 0.75), rel=1e-5)


@pytest.mark.parametrize('eps', [1e-6, 1e-9, 1e-12])
def test_mask_logit_symmetric_for_tiny_eps_in_float32(eps):
    """The FCOS repo clamps with eps = 1e-9, below float32's resolution at 1
    (1 - 1e-9 == 1 in float32): logit(1) must still be finite, = -logit(0)."""
    p = torch.tensor([0., 1.], requires_grad=True)
    logit = mask_logit(p, eps)
    assert torch.isfinite(logit).all()
    limit = math.log(1. / eps)  # log((1 - eps) / eps) up to ~eps
    torch.testing.assert_close(logit.detach(), torch.tensor([-limit, limit]),
                               atol=1e-4, rtol=1e-5)
    logit.sum().backward()
    assert torch.isfinite(p.grad).all()


def test_mask_logit_of_exact_probabilities_through_the_loss_chain():
    """p exactly 0 (far proposal) and exactly 1 (x == q): finite logit and
    finite gradients back to the embeddings and margins."""
    x = torch.zeros(3, 1, 2)
    x[:, 0, 1] = 1000.
    x.requires_grad_()
    q = torch.zeros(1, 3, requires_grad=True)
    s = torch.ones(1, 3, requires_grad=True)
    p = mask_probability(x, q, s)
    assert p[0, 0, 0].item() == 1.0 and p[0, 0, 1].item() == 0.0
    logit = mask_logit(p, 1e-6)
    assert torch.isfinite(logit).all()
    logit.sum().backward()
    for t in (x, q, s):
        assert torch.isfinite(t.grad).all()


# ------------------------------------------------------------ proposal_margin
def test_proposal_margin_finite_for_huge_inputs():
    raw = torch.tensor([-1e30, -50., 0., 3., 1e4, 1e30, float('inf')],
                       requires_grad=True)
    s = proposal_margin(raw)
    assert torch.isfinite(s).all() and (s >= 0).all()
    assert s[2].item() == pytest.approx(1.)
    assert s[3].item() == pytest.approx(math.exp(3.), rel=1e-6)
    assert s[-1].item() == pytest.approx(math.exp(MAX_LOG_MARGIN), rel=1e-6)
    s.sum().backward()
    assert torch.isfinite(raw.grad).all()
    # half precision: exp(MAX_LOG_MARGIN) must still fit
    s16 = proposal_margin(torch.tensor([1e4, 65504.], dtype=torch.float16))
    assert torch.isfinite(s16).all()


def test_margin_clamp_binds_only_below_a_pixel():
    """The authors have no clamp on s; ours (exp of at most MAX_LOG_MARGIN)
    is kept because it binds only where a mask is already narrower than a
    pixel: at s = exp(MAX_LOG_MARGIN) in a spatial dimension p falls to 0.5
    within sqrt(ln 2 / s) embedding units, times coord_norm (100, the
    COCO configs; 50 on the CPU ones) image pixels, under one pixel (0.56).
    Below the clamp s is exp() exactly, so a checkpoint whose log-margins
    stay under it (the published ones could not be checked here) predicts
    as with the authors' code."""
    half_width_px = math.sqrt(math.log(2.) / math.exp(MAX_LOG_MARGIN)) * 100.
    assert half_width_px < 1.
    raw = torch.linspace(-20., MAX_LOG_MARGIN, 301, dtype=torch.float64)
    assert torch.equal(proposal_margin(raw), raw.exp())


# --------------------------------------------------------------- location_map
@pytest.mark.parametrize('stride,h,w', [(4, 7, 9), (8, 16, 20), (16, 5, 3),
                                        (128, 1, 2)])
def test_location_map_matches_mmdet_point_generator(stride, h, w):
    gen = MlvlPointGenerator([stride], offset=0.5)
    points = gen.grid_priors([(h, w)], dtype=torch.float32,
                             device='cpu')[0]                  # (h*w, 2) x, y
    loc = location_map(h, w, stride)
    assert loc.shape == (2, h, w)
    torch.testing.assert_close(loc.reshape(2, -1).T, points, atol=0, rtol=0)
    # channel 0 is x (varies along width), channel 1 is y
    assert (loc[0, :, 1:] - loc[0, :, :-1] == stride).all()
    assert (loc[1, 1:, :] - loc[1, :-1, :] == stride).all()
    assert loc[0, 0, 0] == loc[1, 0, 0] == stride / 2


def test_spatial_embedding_adds_scaled_coordinates():
    conv = torch.tensor([[1., 2.], [3., 4.]])
    coords = torch.tensor([[100., 200.], [300., 50.]])
    torch.testing.assert_close(spatial_embedding(conv, coords),
                               conv + coords / 100.)
    torch.testing.assert_close(spatial_embedding(conv, coords, 0.), conv)
    scale = torch.tensor(2., requires_grad=True)
    out = spatial_embedding(conv, coords, scale)
    torch.testing.assert_close(out, conv + coords / 50.)
    out.sum().backward()
    assert scale.grad.item() == pytest.approx(coords.sum().item() / 100.)


def test_mask_logit_gradient_equals_autograd_of_the_formula():
    """The custom backward (only p kept) equals autograd's through the
    clamps, at the clamp bounds, 0, 1 and inside."""
    eps = 1e-3
    p = torch.tensor([0., eps / 2, eps, 0.3, 0.5, 1. - eps, 1. - eps / 2, 1.],
                     dtype=torch.float64)
    a = p.clone().requires_grad_()
    b = p.clone().requires_grad_()
    got = mask_logit(a, eps)
    ref = torch.log(b.clamp(min=eps)) - torch.log((1. - b).clamp(min=eps))
    torch.testing.assert_close(got, ref)
    w = torch.linspace(-1., 2., len(p), dtype=torch.float64)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad)
    x = torch.rand(4, 5, dtype=torch.float64).mul(0.98).add(0.01)
    assert torch.autograd.gradcheck(lambda t: mask_logit(t, eps),
                                    (x.requires_grad_(), ))


# ----------------------------------------------------------- mixed precision
def _far_case(margin: float, seed: int = 0):
    """Pixel embeddings far from the origin (coordinates / 100 of a large
    image in the 2 spatial dimensions), proposals at some pixels, spatial
    margins up to ``margin`` and pixel spacing such that masks span a few
    pixels: the case where an expanded x^2 - 2xq + q^2 cancels."""
    g = torch.Generator().manual_seed(seed)
    d, h, w, n = 8, 48, 64, 20
    step = 0.1 / margin**0.5
    x = torch.randn(d, h, w, generator=g, dtype=torch.float64) * 0.3 + 5.
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    x[0] = 12. + xs * step
    x[1] = 9. + ys * step
    pick = torch.randint(0, h * w, (n, ), generator=g)
    q = x.reshape(d, -1)[:, pick].T.clone()
    q[:, :2] += step * torch.rand(n, 2, generator=g, dtype=torch.float64)
    s = torch.rand(n, d, generator=g, dtype=torch.float64) * 0.1
    s[:, :2] = margin * (0.5 + 0.5 * torch.rand(n, 2, generator=g,
                                                dtype=torch.float64))
    return x, q, s


@pytest.mark.parametrize('margin', [10., 1e3, 1e4])
def test_mask_probability_exact_under_reduced_precision(margin):
    """fp16 inputs and bf16 CPU autocast: p is float32 and the masks
    (p > 0.5) differ from a float64 evaluation of the same inputs in
    < 1e-4 of the pixels."""
    x, q, s = _far_case(margin)
    # fp16 inputs: the float64 reference sees the same rounded values
    x16, q16, s16 = (t.half() for t in (x, q, s))
    ref16 = naive_mask_probability(*(t.double() for t in (x16, q16, s16)))
    p16 = mask_probability(x16, q16, s16)
    ref = naive_mask_probability(x, q, s)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        p_bf = mask_probability(x.float(), q.float(), s.float())
    assert p16.dtype == p_bf.dtype == torch.float32
    for p, r in ((p16, ref16), (p_bf, ref)):
        # a real test: the masks are neither empty nor everything
        assert 0 < (r > 0.5).sum() < r.numel()
        flipped = ((p > 0.5) != (r > 0.5)).double().mean().item()
        assert flipped < 1e-4, f'{flipped:.2e} of the pixels flipped'


def test_mask_loss_float32_under_autocast():
    """Mask logits and the Lovasz loss stay float32 under bf16 autocast and
    equal the float32 loss."""
    from mmdet.registry import MODELS
    import embedmask_mmdet  # noqa: F401
    x, q, s = _far_case(10.)
    target = (naive_mask_probability(x, q + 0.05, s) > 0.5).float()
    loss_fn = MODELS.build(dict(type='LovaszHingeLoss'))
    x, q, s = x.float(), q.float(), s.float()

    def loss():
        logits = mask_logit(mask_probability(x, q, s), 1e-6)
        return logits, loss_fn(logits.flatten(1), target.flatten(1))

    logits32, loss32 = loss()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        logits_bf, loss_bf = loss()
    assert logits_bf.dtype == loss_bf.dtype == torch.float32
    torch.testing.assert_close(loss_bf, loss32)
