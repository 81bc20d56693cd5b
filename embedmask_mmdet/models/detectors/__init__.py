from .embedmask import EmbedMask

__all__ = ['EmbedMask']
