from .image_io import (IMG_EXTENSIONS, UnreadableImage, list_images,
                       read_image)
from .safe_checkpoint import (allow_mmengine_checkpoint_globals,
                              mmengine_checkpoint_safe_globals)

__all__ = [
    'allow_mmengine_checkpoint_globals', 'mmengine_checkpoint_safe_globals',
    'IMG_EXTENSIONS', 'UnreadableImage', 'list_images', 'read_image'
]
