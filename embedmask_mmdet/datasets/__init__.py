from .synthetic_coco import SYNTHETIC_CLASSES, generate_synthetic_coco

__all__ = ['SYNTHETIC_CLASSES', 'generate_synthetic_coco']

from .robust_coco import RobustCocoDataset  # noqa: E402
from .transforms import RobustLoadImageFromFile, to_bgr_uint8  # noqa: E402

__all__ += ['RobustCocoDataset', 'RobustLoadImageFromFile', 'to_bgr_uint8']
