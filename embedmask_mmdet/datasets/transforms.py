"""Image loading that survives bad files and odd formats."""
import logging
from typing import Optional

import cv2
import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmengine import fileio
from mmengine.logging import print_log
from mmdet.registry import TRANSFORMS

ON_CORRUPT = ('skip', 'error')
_FLAGS = {
    # ANYDEPTH keeps 16 bits so they are scaled here, not truncated by cv2
    'color': cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH,
    'color_ignore_orientation':
    cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH | cv2.IMREAD_IGNORE_ORIENTATION,
}


def to_bgr_uint8(img: np.ndarray) -> np.ndarray:
    """3-channel uint8 BGR from a decoded grayscale, BGR or BGRA image of 8
    or 16 bits; 16-bit values are scaled by 255/65535 (rounded).

    Raises ``ValueError`` for other layouts or dtypes."""
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)  # alpha dropped
    elif not (img.ndim == 3 and img.shape[2] == 3):
        raise ValueError(f'unsupported image shape {img.shape}')
    if img.dtype == np.uint16:
        img = np.rint(img.astype(np.float32) * (255. / 65535.)).astype(
            np.uint8)
    elif img.dtype != np.uint8:
        raise ValueError(f'unsupported pixel type {img.dtype} (8 or 16-bit '
                         'integer images only)')
    return img


def jpeg_truncated(data: bytes) -> bool:
    """A JPEG without its end-of-image marker (FF D9) in its last KiB.

    Entropy-coded JPEG data never contains FF D9, so a file cut anywhere
    after its header lacks it (some decoders return a partial image)."""
    return data[:2] == b'\xff\xd8' and b'\xff\xd9' not in data[-1024:]


@TRANSFORMS.register_module()
class RobustLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` that always yields 3-channel uint8 BGR and
    handles unreadable files per ``on_corrupt``.

    Grayscale images are replicated to 3 channels, alpha is dropped (not
    composited), 16-bit images are scaled to 8 bits. A file is corrupt when
    it cannot be read, is empty, is a JPEG without its end marker (truncated),
    cannot be decoded, or (``check_size``) decodes to another size than the
    annotation's ``width``/``height``.

    Args:
        on_corrupt (str): 'skip' (default): log a warning naming the file,
            count it and return None, so that mmengine's dataset loads
            another sample (training only: a test set cannot skip);
            'error': raise ``OSError`` naming the file and the reason.
        check_size (bool): Compare the decoded size with the dataset's
            ``height``/``width``. Defaults to True.
        color_type (str): 'color' (EXIF orientation applied, as mmcv's
            default) or 'color_ignore_orientation'.
        Others: as ``LoadImageFromFile`` (``imdecode_backend`` must be cv2).
    """

    def __init__(self, *args, on_corrupt: str = 'skip',
                 check_size: bool = True, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if on_corrupt not in ON_CORRUPT:
            raise ValueError(f'RobustLoadImageFromFile: on_corrupt='
                             f'{on_corrupt!r} is not supported; use one of '
                             f'{ON_CORRUPT}')
        if self.color_type not in _FLAGS:
            raise ValueError(f'RobustLoadImageFromFile: color_type='
                             f'{self.color_type!r} is not supported; use one '
                             f'of {tuple(_FLAGS)}')
        if self.imdecode_backend != 'cv2':
            raise ValueError('RobustLoadImageFromFile: imdecode_backend='
                             f'{self.imdecode_backend!r} is not supported; '
                             "use 'cv2'")
        self.on_corrupt = on_corrupt
        self.check_size = check_size
        self.num_skipped = 0

    def _read(self, filename: str) -> bytes:
        if self.file_client_args is not None:
            client = fileio.FileClient.infer_client(self.file_client_args,
                                                    filename)
            return client.get(filename)
        return fileio.get(filename, backend_args=self.backend_args)

    def _load(self, filename: str, results: dict):
        """(image, None) or (None, why it is corrupt)."""
        try:
            data = self._read(filename)
        except Exception as e:  # missing, permission, backend errors
            return None, f'cannot be read ({type(e).__name__}: {e})'
        if len(data) == 0:
            return None, 'the file is empty'
        if jpeg_truncated(data):
            return None, 'truncated JPEG (no end-of-image marker)'
        img = cv2.imdecode(np.frombuffer(data, np.uint8),
                           _FLAGS[self.color_type])
        if img is None:
            return None, 'cannot be decoded (corrupt, truncated or not an ' \
                'image)'
        try:
            img = to_bgr_uint8(img)
        except ValueError as e:
            return None, str(e)
        h, w = img.shape[:2]
        want = results.get('height'), results.get('width')
        if self.check_size and None not in want and (h, w) != tuple(want):
            return None, (
                f'decodes to {w}x{h} but the annotation says {want[1]}x'
                f'{want[0]} (width x height); if the file has an EXIF '
                "rotation, try color_type='color_ignore_orientation'")
        return img, None

    def transform(self, results: dict) -> Optional[dict]:
        filename = results['img_path']
        img, reason = self._load(filename, results)
        if img is None:
            if self.on_corrupt == 'error':
                raise OSError(
                    f'RobustLoadImageFromFile: image {filename!r} {reason}. '
                    'Fix or remove the file (or its entry in the annotation '
                    "file), or set on_corrupt='skip' in the train pipeline "
                    'to skip such images with a logged count')
            self.num_skipped += 1
            print_log(f'RobustLoadImageFromFile: skipped {filename!r}: '
                      f'{reason} ({self.num_skipped} skipped so far by this '
                      'process)', logger='current', level=logging.WARNING)
            return None
        if self.to_float32:
            img = img.astype(np.float32)
        results['img'] = img
        results['img_shape'] = img.shape[:2]
        results['ori_shape'] = img.shape[:2]
        return results

    def __repr__(self) -> str:
        return (super().__repr__()[:-1] + f", on_corrupt='{self.on_corrupt}', "
                f'check_size={self.check_size})')
