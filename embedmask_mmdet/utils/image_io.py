"""Reading input images so that a bad file is reported by name, not by an
OpenCV assertion halfway through a folder."""
import os
import os.path as osp
from typing import List

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


def list_images(inputs: str, limit: int = 0) -> List[str]:
    """The image files of a folder (sorted, by extension), or ``[inputs]``
    for a file; the first ``limit`` only when ``limit > 0``.

    Raises:
        ValueError: A folder without images, or neither a file nor a
            folder (the message names it).
    """
    if osp.isdir(inputs):
        files = sorted(osp.join(inputs, f) for f in os.listdir(inputs)
                       if f.lower().endswith(IMG_EXTENSIONS))
        if not files:
            raise ValueError(f'no images ({", ".join(IMG_EXTENSIONS)}) in '
                             f'{inputs!r}')
        return files[:limit] if limit > 0 else files
    if not osp.isfile(inputs):
        raise ValueError(f'input {inputs!r} is neither an image file nor a '
                         'folder')
    return [inputs]
