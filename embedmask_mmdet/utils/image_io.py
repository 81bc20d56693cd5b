"""Reading input images so that a bad file is reported by name, not by an
OpenCV assertion halfway through a folder."""
import mmcv
import numpy as np

IMG_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


class UnreadableImage(ValueError):
    """An input that is empty, truncated or not an image; the message names
    the file."""


def read_image(path: str, channel_order: str = 'bgr') -> np.ndarray:
    """The image as uint8 (H, W, 3) in ``channel_order``, or
    :class:`UnreadableImage` naming the file and why."""
    try:
        img = mmcv.imread(path, channel_order=channel_order)
    except Exception as e:  # cv2.error, OSError, mmcv's assertions
        raise UnreadableImage(f'{path}: not a readable image '
                              f'({type(e).__name__}: {str(e).strip()[:200]})')
    if img is None or img.size == 0:
        raise UnreadableImage(f'{path}: not a readable image (decoded to '
                              'nothing)')
    return img
