from .lovasz_hinge_loss import LovaszHingeLoss, lovasz_hinge

__all__ = ['LovaszHingeLoss', 'lovasz_hinge']
