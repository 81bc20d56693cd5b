"""The NumPy step after the graph: from the padded input's coordinates to
the original image's, as ``EmbedMaskMaskHead.predict_by_feat`` rescales.

Boxes are scaled by (ori / img) and clipped; each mask probability map is
cropped to ``img_shape``, resized bilinearly (half-pixel centres, as
``F.interpolate(align_corners=False)``) to ``ori_shape`` and thresholded
at ``mask_thr``; with ``crop_to_box`` pixels farther than the padding
outside their box are cleared. For the authors' placement
(``alignment='adelaidet'``) this is their pipeline step for step; for
``'centre'`` PyTorch resamples p to the original size in one step, so
masks of a resized image can differ at the boundary by a fraction of a
pixel (identical when the image was not resized).
"""
from typing import Tuple

import cv2
import numpy as np

# cv2.resize takes at most this many channels at once
_CV_MAX_CHANNELS = 512


def resize_maps(maps: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """(N, h, w) float32 -> (N, out_h, out_w), bilinear, half-pixel."""
    out_h, out_w = size
    if maps.shape[1:] == (out_h, out_w):
        return maps
    out = np.empty((maps.shape[0], out_h, out_w), np.float32)
    for i in range(0, maps.shape[0], _CV_MAX_CHANNELS):
        chunk = np.ascontiguousarray(
            maps[i:i + _CV_MAX_CHANNELS].transpose(1, 2, 0))
        resized = cv2.resize(chunk, (out_w, out_h),
                             interpolation=cv2.INTER_LINEAR)
        out[i:i + _CV_MAX_CHANNELS] = resized.reshape(
            out_h, out_w, -1).transpose(2, 0, 1)
    return out


def crop_to_boxes(masks: np.ndarray, boxes: np.ndarray,
                  padding: float) -> np.ndarray:
    """``crop_masks_to_boxes`` in NumPy: clears pixels whose centre is
    farther than ``padding`` outside their box. In place; returns masks."""
    ys = np.arange(masks.shape[1], dtype=np.float32) + 0.5
    xs = np.arange(masks.shape[2], dtype=np.float32) + 0.5
    b = boxes[:, :, None]
    in_y = (ys >= b[:, 1] - padding) & (ys <= b[:, 3] + padding)
    in_x = (xs >= b[:, 0] - padding) & (xs <= b[:, 2] + padding)
    masks &= in_y[:, :, None] & in_x[:, None, :]
    return masks


def postprocess(dets: np.ndarray, labels: np.ndarray, masks: np.ndarray,
                img_shape: Tuple[int, int], ori_shape: Tuple[int, int],
                mask_thr: float, crop_to_box: bool = False,
                crop_padding: float = 2., mask_out_stride: int = 4) -> dict:
    """Graph outputs of one image -> ``bboxes`` (N, 4) float32, ``scores``
    (N,), ``labels`` (N,) int64 and ``masks`` (N, ori_h, ori_w) bool, in
    the original image."""
    img_h, img_w = (int(s) for s in img_shape[:2])
    out_h, out_w = (int(s) for s in ori_shape[:2])
    scale = np.array([out_w / img_w, out_h / img_h], np.float32)
    boxes = dets[:, :4].astype(np.float32) * np.tile(scale, 2)
    boxes[:, 0::2] = boxes[:, 0::2].clip(0, out_w)
    boxes[:, 1::2] = boxes[:, 1::2].clip(0, out_h)
    probs = resize_maps(masks[:, :img_h, :img_w], (out_h, out_w))
    binary = probs > mask_thr
    if crop_to_box:
        crop_to_boxes(binary, boxes,
                      crop_padding * mask_out_stride * float(scale.max()))
    return dict(bboxes=boxes, scores=dets[:, 4].astype(np.float32),
                labels=labels.astype(np.int64), masks=binary)
