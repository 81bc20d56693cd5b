from .embedmask_bbox_head import EmbedMaskBboxHead
from .embedmask_mask_head import EmbedMaskMaskHead

__all__ = ['EmbedMaskBboxHead', 'EmbedMaskMaskHead']
