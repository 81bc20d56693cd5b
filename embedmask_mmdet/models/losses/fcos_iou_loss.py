"""The box loss of the authors' FCOS code (AdelaiDet ``adet/layers/iou_loss.py``,
and the FCOS repository the same): IoU with a +1 on intersection and union.

mmdet's ``IoULoss`` / ``GIoULoss`` compute IoU = I / U (+ eps). The authors
compute IoU = (I + 1) / (U + 1) on stride-normalised distances (l, t, r, b)
/ stride. On P3 a small object is a few stride units wide, so the +1 damps
the IoU gradient of small boxes: their loss is not mmdet's on small objects.
The GIoU penalty term (C - U) / C has no +1 in their code either way.
"""
from typing import Optional

import torch
from mmdet.models.losses.utils import weight_reduce_loss
from mmdet.registry import MODELS
from torch import Tensor, nn

LOSS_TYPES = ('iou', 'linear_iou', 'giou')


def fcos_iou_loss(pred: Tensor, target: Tensor, loss_type: str = 'giou',
                  smooth: float = 1.0) -> Tensor:
    """Elementwise loss of the authors' ``IOULoss``, (N,).

    With boxes around a common point (both decoded from the same FCOS
    location, so only l + r, t + b and the min/max of the sides matter):

        I = (min(l, l*) + min(r, r*)) (min(t, t*) + min(b, b*))
        U = (l + r)(t + b) + (l* + r*)(t* + b*) - I
        C = (max(l, l*) + max(r, r*)) (max(t, t*) + max(b, b*))
        IoU = (I + smooth) / (U + smooth),  GIoU = IoU - (C - U) / C
        loss = -log IoU ('iou'), 1 - IoU ('linear_iou'), 1 - GIoU ('giou')

    Boxes given as (x1, y1, x2, y2) decoded from one point p: x1 = p_x - l,
    x2 = p_x + r, so min(x2, x2*) - max(x1, x1*) = min(r, r*) + min(l, l*)
    and the formula is the authors' on (l, t, r, b) exactly.

    Args:
        pred (Tensor): Predicted boxes (N, 4), (x1, y1, x2, y2), in the
            distance units of the loss (stride units with FCOS'
            ``norm_on_bbox``).
        target (Tensor): Target boxes (N, 4), same point and units.
        loss_type (str): 'iou', 'linear_iou' or 'giou'.
        smooth (float): Added to I and U (1.0 in the authors' code).

    Returns:
        Tensor: (N,) losses.
    """
    w_inter = torch.min(pred[:, 2], target[:, 2]) - \
        torch.max(pred[:, 0], target[:, 0])
    h_inter = torch.min(pred[:, 3], target[:, 3]) - \
        torch.max(pred[:, 1], target[:, 1])
    inter = w_inter * h_inter
    area_pred = (pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1])
    area_target = (target[:, 2] - target[:, 0]) * (target[:, 3] - target[:, 1])
    union = area_pred + area_target - inter
    ious = (inter + smooth) / (union + smooth)
    if loss_type == 'iou':
        return -torch.log(ious)
    if loss_type == 'linear_iou':
        return 1 - ious
    enclose = (torch.max(pred[:, 2], target[:, 2]) -
               torch.min(pred[:, 0], target[:, 0])) * \
        (torch.max(pred[:, 3], target[:, 3]) -
         torch.min(pred[:, 1], target[:, 1]))
    return 1 - (ious - (enclose - union) / enclose)


@MODELS.register_module()
class FCOSIoULoss(nn.Module):
    """The authors' FCOS ``IOULoss`` (see :func:`fcos_iou_loss`) with mmdet's
    loss interface, a drop-in for ``GIoULoss`` in an FCOS head's
    ``loss_bbox``: mmdet's FCOS heads pass the centerness targets as
    ``weight`` and their sum as ``avg_factor``, which is the authors'
    ``(loss * ctrness_targets).sum() / loss_denorm``.

    Args:
        loss_type (str): 'iou', 'linear_iou' or 'giou' (AdelaiDet's
            ``MODEL.FCOS.LOC_LOSS_TYPE``; 'giou' for EmbedMask).
        smooth (float): The +1 of the authors' IoU. Defaults to 1.0.
        reduction (str): 'none', 'mean' or 'sum'. Defaults to 'mean'.
        loss_weight (float): Defaults to 1.0.
    """

    def __init__(self, loss_type: str = 'giou', smooth: float = 1.0,
                 reduction: str = 'mean', loss_weight: float = 1.0) -> None:
        super().__init__()
        if loss_type not in LOSS_TYPES:
            raise ValueError(f'FCOSIoULoss: loss_type must be one of '
                             f'{LOSS_TYPES}, got {loss_type!r}')
        if smooth < 0:
            raise ValueError(f'FCOSIoULoss: smooth must be >= 0, got '
                             f'{smooth!r}')
        self.loss_type = loss_type
        self.smooth = smooth
        self.reduction = reduction
        self.loss_weight = loss_weight

    def forward(self, pred: Tensor, target: Tensor,
                weight: Optional[Tensor] = None,
                avg_factor: Optional[float] = None,
                reduction_override: Optional[str] = None) -> Tensor:
        """Weighted loss of (N, 4) boxes; ``weight`` (N,) or (N, 4) (then
        averaged over the last dimension, as mmdet's IoU losses)."""
        reduction = reduction_override or self.reduction
        if weight is not None and weight.dim() > 1:
            weight = weight.mean(-1)
        # float32 under autocast: the loss is exact (docs/design.md)
        dtype = torch.promote_types(pred.dtype, torch.float32)
        with torch.autocast(pred.device.type, enabled=False):
            loss = fcos_iou_loss(pred.to(dtype), target.to(dtype),
                                 self.loss_type, self.smooth)
        return self.loss_weight * weight_reduce_loss(
            loss, weight, reduction, avg_factor)
