from .fused_focal_loss import FusedFocalLoss, sigmoid_focal_loss_and_grad
from .lovasz_hinge_loss import LovaszHingeLoss, lovasz_hinge

__all__ = ['FusedFocalLoss', 'LovaszHingeLoss', 'lovasz_hinge',
           'sigmoid_focal_loss_and_grad']
