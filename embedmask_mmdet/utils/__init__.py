from .image_io import (IMG_EXTENSIONS, UnreadableImage, list_images,
                       read_image)
from .result_formats import (MASK_FORMATS, check_mask_format,
                             dump_coco_results, image_result,
                             instances_to_coco_results, instances_to_records,
                             mask_to_polygons, mask_to_rle,
                             segmentation_to_mask, xyxy_to_xywh)
from .safe_checkpoint import (allow_mmengine_checkpoint_globals,
                              mmengine_checkpoint_safe_globals)

__all__ = [
    'allow_mmengine_checkpoint_globals', 'mmengine_checkpoint_safe_globals',
    'IMG_EXTENSIONS', 'UnreadableImage', 'list_images', 'read_image',
    'MASK_FORMATS', 'check_mask_format', 'dump_coco_results', 'image_result',
    'instances_to_coco_results', 'instances_to_records', 'mask_to_polygons',
    'mask_to_rle', 'segmentation_to_mask', 'xyxy_to_xywh'
]
