from .inferencer import (EmbedMaskInferencer, amp_dtype, indexed_models,
                         model_index_file, use_channels_last)
from .sliced import EmbedMaskSlicedInferencer, Tile, tile_grid
from .tracking import (ASSOCIATIONS, EmbeddingTracker, associate,
                       deduplicate, embedding_distance, mask_iou_pairs)
from .video import (VIDEO_EXTENSIONS, VideoSummary, is_video_source,
                    open_capture, run_video, source_name)

__all__ = ['EmbedMaskInferencer', 'EmbedMaskSlicedInferencer', 'Tile',
           'tile_grid', 'amp_dtype', 'indexed_models',
           'model_index_file', 'use_channels_last', 'VIDEO_EXTENSIONS',
           'VideoSummary', 'is_video_source', 'open_capture', 'run_video',
           'source_name', 'ASSOCIATIONS', 'EmbeddingTracker', 'associate',
           'deduplicate', 'embedding_distance', 'mask_iou_pairs']
