from .inferencer import (EmbedMaskInferencer, amp_dtype, indexed_models,
                         model_index_file, use_channels_last)

__all__ = ['EmbedMaskInferencer', 'amp_dtype', 'indexed_models',
           'model_index_file', 'use_channels_last']
