"""Binary Lovász hinge loss (Berman et al., CVPR 2018), the mask loss of EmbedMask."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor
from torch.autograd.function import once_differentiable


def lovasz_grad(gt_sorted: Tensor, gts: Optional[Tensor] = None) -> Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors.

    g_i = J(i) - J(i-1),  J(i) = 1 - |gt ∩ top_i| / |gt ∪ top_i|  (Alg. 1 of the paper)

    Args:
        gt_sorted (Tensor): (N, P) binary labels ordered by decreasing error,
            or the first P of them.
        gts (Tensor, optional): (N, 1) positives of each full row; needed
            when ``gt_sorted`` is a prefix. Default: its row sums.

    Returns:
        Tensor: (N, P) weights, summing to the Jaccard loss of the full set.
    """
    if gts is None:
        gts = gt_sorted.sum(dim=1, keepdim=True)
    intersection = gts - gt_sorted.cumsum(dim=1)
    union = gts + (1. - gt_sorted).cumsum(dim=1)
    jaccard = 1. - intersection / union
    if gt_sorted.size(1) > 1:
        jaccard = torch.cat([jaccard[:, :1], jaccard[:, 1:] - jaccard[:, :-1]], dim=1)
    return jaccard


def lovasz_hinge(logits: Tensor, labels: Tensor) -> Tensor:
    """Binary Lovász hinge of each instance, vectorised over instances.

    loss_k = Σ_i relu(e_k,π(i)) · g_i,   e = 1 - logit · (2·label - 1),
    π sorting e_k in decreasing order and g = lovasz_grad(labels_k,π).

    Args:
        logits (Tensor): (N, P) logits (any real value).
        labels (Tensor): (N, P) binary targets.

    Returns:
        Tensor: (N,) loss per instance.
    """
    return _LovaszHinge.apply(logits, labels)


def _lovasz_hinge_and_grad(logits: Tensor, labels: Tensor,
                           with_grad: bool) -> Tuple[Tensor, Optional[Tensor]]:
    """The loss of :func:`lovasz_hinge` and, with ``with_grad``, its exact
    gradient w.r.t. ``logits``: -sign · scatter_π(1[e > 0] · g)."""
    labels = labels.to(logits.dtype)
    signs = 2. * labels - 1.
    errors = 1. - logits * signs
    # Only errors > 0 enter the sum, and they come first in the order; the
    # weights of that prefix need just its labels and each row's positive
    # count. So sorting the k largest errors per row (k = the most positive
    # errors of any row) gives the same loss and gradient as a full sort, and
    # is much cheaper once most pixels are confidently right.
    k = int((errors > 0).sum(dim=1).max()) if errors.numel() else 0
    if k == 0:
        # all zero, or NaN where a logit is NaN (the detector's guard must
        # see it: NaN > 0 is False, so k alone would hide it)
        loss = F.relu(errors).sum(dim=1)
        return loss, torch.zeros_like(logits) if with_grad else None
    if 4 * k < 3 * errors.size(1):  # top-k beats a full sort up to ~75 %
        errors_sorted, perm = torch.topk(errors, k, dim=1, sorted=True)
    else:
        errors_sorted, perm = torch.sort(errors, dim=1, descending=True)
    del errors
    # the ordering is a constant of the extension: no gradient through it
    grad = lovasz_grad(labels.gather(1, perm), labels.sum(dim=1, keepdim=True))
    loss = (F.relu(errors_sorted) * grad).sum(dim=1)
    if not with_grad:
        return loss, None
    # d loss / d e_π(i) = 1[e_π(i) > 0] g_i (relu' is 0 at 0, as in autograd)
    grad_sorted = torch.where(errors_sorted > 0, grad, grad.new_zeros(()))
    grad_logits = torch.zeros_like(logits).scatter_(1, perm, grad_sorted)
    return loss, grad_logits.mul_(-signs)


class _LovaszHinge(torch.autograd.Function):
    """Lovász hinge whose backward is the gradient computed in the forward.

    Autograd would keep the signs, the int64 order, the sorted errors and the
    weights of every (N, P) mask for the backward; this keeps one (N, P)
    tensor, which matters with 500 masks at stride 4 of a COCO image.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, labels: Tensor) -> Tensor:
        loss, grad = _lovasz_hinge_and_grad(logits, labels,
                                            ctx.needs_input_grad[0])
        ctx.save_for_backward(grad)
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        grad, = ctx.saved_tensors
        if grad is None:
            return None, None
        return grad * grad_loss[:, None], None


@MODELS.register_module()
class LovaszHingeLoss(nn.Module):
    """Lovász hinge loss on per-instance mask logits, mmdet loss conventions.

    Args:
        reduction (str): 'none' | 'mean' | 'sum' over instances.
        loss_weight (float): Weight of the loss.
    """

    def __init__(self, reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if reduction not in ('none', 'mean', 'sum'):
            raise ValueError(f"LovaszHingeLoss: reduction must be 'none', 'mean' "
                             f"or 'sum', got {reduction!r}")
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self,
                pred: Tensor,
                target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """
        Args:
            pred (Tensor): (N, *) mask logits of N instances.
            target (Tensor): (N, *) binary masks, same shape as ``pred``.
            weight (Tensor, optional): (N,) per-instance weight.
            avg_factor (float, optional): Divisor of the summed loss.
            reduction_override (str, optional): Overrides ``reduction``.

        Returns:
            Tensor: The loss.
        """
        assert reduction_override in (None, 'none', 'mean', 'sum')
        reduction = reduction_override if reduction_override else self.reduction
        n = pred.size(0)
        if n == 0:
            # no instance: an exact zero that keeps the graph (mean of nothing is NaN)
            return pred.sum() * 0.
        loss = lovasz_hinge(pred.reshape(n, -1), target.reshape(n, -1))
        loss = weight_reduce_loss(loss, weight, reduction, avg_factor)
        return self.loss_weight * loss
