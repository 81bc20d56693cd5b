"""The formulas of EmbedMask (Ying et al., arXiv 1912.01954), one function each.

Shapes: N proposals, D embedding dimensions, H x W a pixel-embedding map.
"""
import math

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .torch_compat import is_exporting

# floats of one (proposals, pixels) slab of the energy. On a CPU 1 MB, so
# that the slab stays in cache while the D dimensions are accumulated; on an
# accelerator the cost is per kernel launch, so a slab holds every proposal
# of a COCO training image (500 masks x 200 x 336 cells at stride 4) and
# the loop is D x 2 kernels (256 MB of scratch at most)
ENERGY_BLOCK_ELEMENTS = 2**18
ENERGY_BLOCK_ELEMENTS_ACCELERATOR = 2**26


def energy_block_elements(device: torch.device) -> int:
    """Floats of one slab of the energy loop on ``device`` (see above)."""
    return ENERGY_BLOCK_ELEMENTS if device.type == 'cpu' else \
        ENERGY_BLOCK_ELEMENTS_ACCELERATOR
# exp() of a larger log-margin overflows float16 and makes p a step function;
# the authors have no clamp, and this one binds only where p = 0.5 lies under
# a pixel from the proposal (sqrt(ln2 / e^10) x 100 = 0.56 px)
MAX_LOG_MARGIN = 10.


def prior_margin_bias(prior_margin: float) -> float:
    """Bias of the margin conv so that p = 0.5 at distance m at init.

    exp(-s m^2) = 0.5  =>  s = ln2 / m^2,  bias = log(ln2 / m^2).

    Args:
        prior_margin (float): m, the distance at which p = 0.5; > 0.

    Returns:
        float: log(ln2 / m^2), the log-margin giving that s.

    Raises:
        ValueError: ``prior_margin`` is not > 0.
    """
    if prior_margin <= 0:
        raise ValueError(f'prior_margin must be > 0, got {prior_margin}')
    return math.log(math.log(2.) / prior_margin**2)


def proposal_margin(log_margin: Tensor) -> Tensor:
    """Proposal margin s = exp(conv(...)), a per-dimension precision.

    Args:
        log_margin (Tensor): (..., D) raw conv output.

    Returns:
        Tensor: (..., D) positive margins; the exponent is capped at
        ``MAX_LOG_MARGIN`` so that s and its gradient stay finite.
    """
    return log_margin.clamp(max=MAX_LOG_MARGIN).exp()


def location_map(height: int, width: int, stride, device=None,
                 dtype=torch.float32) -> Tensor:
    """Image coordinates (x, y) of the cell centres of a stride-``stride`` map.

    Cell (i, j) covers [j*s, (j+1)*s) x [i*s, (i+1)*s); its centre
    ((j + 0.5) s, (i + 0.5) s) is also where mmdet's ``MlvlPointGenerator``
    puts the FCOS location, so proposals and pixels share one convention.
    ``stride`` may be a (stride_y, stride_x) pair of floats (a resized grid).

    Args:
        height (int): Rows of the map.
        width (int): Columns of the map.
        stride (int | float | tuple): s, or (stride_y, stride_x).
        device (torch.device, optional): Device of the output. Defaults to
            None.
        dtype (torch.dtype): dtype of the output. Defaults to
            ``torch.float32``.

    Returns:
        Tensor: (2, height, width), channel 0 x and channel 1 y.
    """
    stride_y, stride_x = stride if isinstance(stride, (tuple, list)) \
        else (stride, stride)
    ys = (torch.arange(height, device=device, dtype=dtype) + 0.5) * stride_y
    xs = (torch.arange(width, device=device, dtype=dtype) + 0.5) * stride_x
    return torch.stack([xs[None, :].expand(height, width),
                        ys[:, None].expand(height, width)])


def spatial_embedding(conv_out: Tensor, coords: Tensor, coord_scale=1.,
                      coord_norm: float = 100.) -> Tensor:
    """Spatial part of a proposal or pixel embedding.

    e_spatial = conv_out + scale * (x, y) / coord_norm  (coord_norm = 100)

    Args:
        conv_out (Tensor): (..., 2, ...) conv output of the 2 spatial channels.
        coords (Tensor): image coordinates, broadcastable to ``conv_out``.
        coord_scale (float | Tensor): 1, 0 (no coordinates) or the learnable
            scalar of the FCOS-repo design.
        coord_norm (float): Divisor of the coordinates. Defaults to 100.

    Returns:
        Tensor: ``conv_out`` + ``coords`` x coord_scale / coord_norm, of
        the broadcast shape of ``conv_out`` and ``coords``.
    """
    return conv_out + coords * (coord_scale / coord_norm)


def mask_probability(pixel_embed: Tensor, proposal_embed: Tensor,
                     margin: Tensor) -> Tensor:
    """Mask probability of every pixel for every proposal.

    p_ik = exp(- Σ_d s_kd (x_id - q_kd)^2)

    The exponential of :func:`mask_log_probability`, which takes the same
    arguments x, q and s; always float32 for the same reason.

    Returns:
        Tensor: (N, H, W) or (B, N, H, W) float32 probabilities in [0, 1].
    """
    with torch.autocast(pixel_embed.device.type, enabled=False):
        return torch.exp(mask_log_probability(pixel_embed, proposal_embed,
                                              margin))


def mask_log_probability(pixel_embed: Tensor, proposal_embed: Tensor,
                         margin: Tensor) -> Tensor:
    """Log mask probability of every pixel for every proposal.

    log p_ik = - Σ_d s_kd (x_id - q_kd)^2

    Always float32, whatever the input dtype or autocast state: p feeds the
    mask threshold and the mask loss, and at large margins s an fp16/bf16
    energy flips many pixels across p = 0.5. The differences (x - q) are
    formed explicitly (no expansion into x^2 - 2xq + q^2, whose cancellation
    costs ~s * |x|^2 * eps of accuracy), one dimension at a time so that no
    (N, D, H, W) tensor is formed. A leading batch dimension B on all three
    inputs evaluates B images in the same ops (batched inference; pad the
    proposals of images with fewer).

    Args:
        pixel_embed (Tensor): (D, H, W) or (B, D, H, W) pixel embeddings x.
        proposal_embed (Tensor): (N, D) or (B, N, D) proposal embeddings q.
        margin (Tensor): (N, D) or (B, N, D) proposal margins s > 0.

    Returns:
        Tensor: (N, H, W) or (B, N, H, W) float32 log-probabilities <= 0.
    """
    batched = pixel_embed.dim() == 4
    if not batched:
        pixel_embed, proposal_embed, margin = (
            t[None] for t in (pixel_embed, proposal_embed, margin))
    batch, dim, height, width = pixel_embed.shape
    with torch.autocast(pixel_embed.device.type, enabled=False):
        x = pixel_embed.float().reshape(batch, dim, height * width)
        # distances do not change when both sides are centred on the mean
        # pixel; it keeps the backward's expanded products well conditioned
        centre = x.detach().mean(dim=2)
        x, q, s = x - centre[..., None], proposal_embed.float() - \
            centre[:, None], margin.float()
        if is_exporting():
            # the same sum as a graph (the number of proposals is not known
            # when it is traced); inference only
            energy = sum(
                s[..., d, None] * (x[:, d, None] - q[..., d, None]).square()
                for d in range(dim))
        else:
            energy = _MaskEnergy.apply(x, q, s)
        log_prob = (-energy).reshape(batch, -1, height, width)
        return log_prob if batched else log_prob[0]


class _MaskEnergy(torch.autograd.Function):
    """E_bki = Σ_d s_bkd (x_bdi - q_bkd)^2 for x (B, D, P), q and s
    (B, N, D) -> (B, N, P).

    The forward loops over d (exact differences, (B, N, P) memory); the
    backward needs only matrix products and keeps x, q, s (autograd would
    keep D tensors of (B, N, P)):
        dE/dx_di = 2 Σ_k g_ki s_kd (x_di - q_kd)
        dE/dq_kd = -2 s_kd Σ_i g_ki (x_di - q_kd)
        dE/ds_kd = Σ_i g_ki (x_di - q_kd)^2
    """

    @staticmethod
    def forward(ctx, x: Tensor, q: Tensor, s: Tensor) -> Tensor:
        ctx.save_for_backward(x, q, s)
        batch, num, pixels = q.size(0), q.size(1), x.size(2)
        energy = x.new_zeros((batch, num, pixels))
        block = max(1, energy_block_elements(x.device) //
                    max(batch * pixels, 1))
        diff = x.new_empty((batch, min(block, num), pixels))
        for i in range(0, num, block):
            e, qb, sb = (t[:, i:i + block] for t in (energy, q, s))
            buf = diff[:, :e.size(1)]
            for d in range(x.size(1)):
                torch.sub(x[:, d, None, :], qb[:, :, d, None], out=buf)
                e.addcmul_(buf.square_(), sb[:, :, d, None])
        return energy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, q, s = ctx.saved_tensors
        # float32 even if backward runs under autocast (the matmuls below
        # are autocast-eligible): these gradients come from p
        with torch.autocast(x.device.type, enabled=False):
            return _MaskEnergy._backward(ctx, grad.float(), x, q, s)

    @staticmethod
    def _backward(ctx, grad: Tensor, x: Tensor, q: Tensor, s: Tensor):
        g_sum = grad.sum(dim=2, keepdim=True)  # (B, N, 1)
        gx = grad @ x.mT  # (B, N, D): Σ_i g_ki x_di
        grad_x = grad_q = grad_s = None
        if ctx.needs_input_grad[0]:
            grad_x = 2. * (x * (s.mT @ grad) - (s * q).mT @ grad)
        if ctx.needs_input_grad[1]:
            grad_q = -2. * s * (gx - q * g_sum)
        if ctx.needs_input_grad[2]:
            grad_s = grad @ x.square().mT - 2. * q * gx + \
                q.square() * g_sum
        return grad_x, grad_q, grad_s


def mask_logit(prob: Tensor, eps: float) -> Tensor:
    """logit(p) with p clamped to [eps, 1 - eps] so it never reaches ±inf.

    logit = log(max(p, eps)) - log(max(1 - p, eps)). 1 - p is clamped rather
    than p: in float32 ``1 - eps`` rounds to 1 for eps < 6e-8 (the FCOS
    repo's 1e-9), which would give logit(1) = inf.

    Args:
        prob (Tensor): probabilities of any shape.
        eps (float): clamp bound.

    Returns:
        Tensor: logits, same shape.
    """
    return _MaskLogit.apply(prob, eps)


class _MaskLogit(torch.autograd.Function):
    """:func:`mask_logit` keeping only ``prob`` for the backward (autograd
    would keep four tensors of its size: the training masks of every
    positive at stride 4)."""

    @staticmethod
    def forward(ctx, prob: Tensor, eps: float) -> Tensor:
        ctx.eps = eps
        ctx.save_for_backward(prob)
        return torch.log(prob.clamp(min=eps)) - torch.log(
            (1. - prob).clamp(min=eps))

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        prob, = ctx.saved_tensors
        eps = ctx.eps
        neg = 1. - prob
        # d/dp log(max(p, eps)) = 1/p where p >= eps (clamp passes the
        # gradient at the bound, as autograd's clamp does), else 0
        grad = torch.where(prob >= eps, prob.clamp(min=eps).reciprocal(), 0.)
        grad += torch.where(neg >= eps, neg.clamp(min=eps).reciprocal(), 0.)
        return grad.mul_(grad_out), None
