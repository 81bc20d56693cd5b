"""Sigmoid focal loss (Lin et al., ICCV 2017) as one autograd Function.

mmdet's ``FocalLoss`` runs on CPU as ``py_sigmoid_focal_loss``: eight
elementwise ops, several of which autograd keeps for the backward, each of
the logits' size. Dense heads apply it to every location and class (FCOS:
all levels x 80 classes; the semantic branch: every P3 cell x 80), so those
copies are a visible share of a training step's peak memory. This Function
computes the loss and its exact gradient in the forward and keeps the
gradient alone.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable


def sigmoid_focal_loss_and_grad(logits: Tensor, targets: Tensor, gamma: float,
                                alpha: float, with_grad: bool = True):
    """Elementwise focal loss and its derivative w.r.t. the logits.

    With p = sigmoid(x), for t = 1:  FL = -α (1-p)^γ log p,
        dFL/dx = α (1-p)^γ (γ p log p - (1 - p));
    for t = 0:  FL = -(1-α) p^γ log(1-p),
        dFL/dx = (1-α) p^γ (p - γ (1-p) log(1-p)).
    As in mmdet's python version, the focal weight is not detached.

    Args:
        logits (Tensor): (N, C) raw scores x.
        targets (Tensor): (N, C) binary targets t.

    Returns:
        tuple[Tensor, Tensor | None]: (N, C) losses and gradients.
    """
    t = targets.to(logits.dtype)
    p = logits.sigmoid()
    log_p = F.logsigmoid(logits)
    log_1mp = F.logsigmoid(-logits)
    pos_w = alpha * (1. - p).pow(gamma)
    neg_w = (1. - alpha) * p.pow(gamma)
    loss = -(t * pos_w * log_p + (1. - t) * neg_w * log_1mp)
    if not with_grad:
        return loss, None
    grad = t * pos_w * (gamma * p * log_p - (1. - p)) + \
        (1. - t) * neg_w * (p - gamma * (1. - p) * log_1mp)
    return loss, grad


def mmcv_cuda_focal_loss() -> bool:
    """Whether mmcv's compiled ops have the CUDA focal-loss kernel (a
    CPU-only mmcv build has the op but no CUDA implementation)."""
    global _MMCV_CUDA_FOCAL
    if _MMCV_CUDA_FOCAL is None:
        try:
            from mmcv.ops import sigmoid_focal_loss
            x = torch.zeros((1, 2), device='cuda', requires_grad=True)
            sigmoid_focal_loss(x, torch.zeros(1, dtype=torch.long,
                                              device='cuda'), 2., .25).sum()
            _MMCV_CUDA_FOCAL = True
        except (ImportError, RuntimeError, NotImplementedError):
            _MMCV_CUDA_FOCAL = False
    return _MMCV_CUDA_FOCAL


_MMCV_CUDA_FOCAL = None


class _SigmoidFocal(torch.autograd.Function):
    """Focal loss summed with ``weight``; keeps only the weighted gradient."""

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weight: Optional[Tensor],
                gamma: float, alpha: float) -> Tensor:
        loss, grad = sigmoid_focal_loss_and_grad(
            logits, targets, gamma, alpha, with_grad=ctx.needs_input_grad[0])
        if weight is not None:
            loss = loss * weight
            if grad is not None:
                grad = grad * weight
        if grad is not None:
            ctx.save_for_backward(grad)
        return loss.sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):
        grad, = ctx.saved_tensors
        return grad * grad_out, None, None, None, None


@MODELS.register_module()
class FusedFocalLoss(FocalLoss):
    """mmdet's sigmoid ``FocalLoss`` (same arguments, values and gradients)
    computed by one autograd Function that keeps a single logits-sized tensor
    for the backward instead of autograd's several.

    Used for what dense heads pass: class labels (num_classes = background)
    reduced by 'mean' (with or without ``avg_factor``) or 'sum'. One-hot or
    soft targets, reduction 'none' and ``activated=True`` fall back to
    mmdet's implementation.

    On CUDA tensors, with ``cuda_kernel=True`` (default) and mmcv's compiled
    CUDA ops, the loss is mmdet's, i.e. mmcv's fused focal-loss kernels (one
    kernel forward, one backward, against about 15 elementwise kernels
    here), on float32 logits so that it is exact under fp16 autocast.

    Args:
        cuda_kernel (bool): Use mmcv's CUDA kernel on CUDA tensors. Defaults
            to True.
        **kwargs: mmdet's ``FocalLoss`` arguments.
    """

    def __init__(self, *args, cuda_kernel: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.cuda_kernel = bool(cuda_kernel)

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = reduction_override or self.reduction
        if not self.use_sigmoid or self.activated or reduction == 'none' \
                or target.dim() == pred.dim():
            return super().forward(pred, target, weight, avg_factor,
                                   reduction_override)
        if pred.is_cuda and self.cuda_kernel and mmcv_cuda_focal_loss():
            return super().forward(pred.float(), target, weight, avg_factor,
                                   reduction_override)
        if reduction == 'sum' and avg_factor is not None:
            raise ValueError('avg_factor can not be used with reduction="sum"')
        num_classes = pred.size(1)
        # labels in [0, num_classes]; num_classes is background
        target = target[:, None] == torch.arange(num_classes,
                                                 device=target.device)
        if weight is not None:
            if weight.dim() == 1 and weight.size(0) == pred.size(0):
                weight = weight[:, None]
            elif weight.numel() == pred.numel():
                weight = weight.reshape(pred.shape)
            else:
                raise ValueError(
                    'FusedFocalLoss: weight must have one value per '
                    f'prediction or per element; got {tuple(weight.shape)} '
                    f'for predictions {tuple(pred.shape)}')
            weight = weight.to(pred.dtype)
        total = _SigmoidFocal.apply(pred, target, weight, self.gamma,
                                    self.alpha)
        if reduction == 'mean':
            # as weight_reduce_loss: mean over elements, or sum / avg_factor
            total = total / (pred.numel() if avg_factor is None else
                             avg_factor + torch.finfo(torch.float32).eps)
        return self.loss_weight * total
