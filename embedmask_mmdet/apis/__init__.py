from .inferencer import EmbedMaskInferencer, amp_dtype, use_channels_last

__all__ = ['EmbedMaskInferencer', 'amp_dtype', 'use_channels_last']
