from .embedmask_tta import EmbedMaskTTAModel

__all__ = ['EmbedMaskTTAModel']
