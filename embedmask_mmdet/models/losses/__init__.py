from .fcos_iou_loss import FCOSIoULoss, fcos_iou_loss
from .fused_focal_loss import FusedFocalLoss, sigmoid_focal_loss_and_grad
from .lovasz_hinge_loss import LovaszHingeLoss, lovasz_hinge

__all__ = ['FCOSIoULoss', 'fcos_iou_loss', 'FusedFocalLoss', 'LovaszHingeLoss',
           'lovasz_hinge', 'sigmoid_focal_loss_and_grad']
