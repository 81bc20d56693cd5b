"""The authors' placement of masks (AdelaiDet ``EmbedMask.postprocess``):
``aligned_bilinear`` x stride, crop to the input, bilinear to the output
size, threshold; evaluated as the separable linear map W_y P W_x^T per
detection, only where its above-threshold cells reach.

Shapes: N detections, (h, w) cells at ``stride``, (out_h, out_w) output.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from mmdet.models.utils.misc import aligned_bilinear
from torch import Tensor

from .mask_paste import box_keep, zero_masks


def _aligned_axis_weights(cells: int, stride: int, crop: int, out: int,
                          like: Tensor) -> Tensor:
    """(out, cells) weights of the authors' placement along one axis:
    ``aligned_bilinear`` x stride, crop to ``crop``, bilinear
    (align_corners=False) to ``out``, read off those ops applied to one-hot
    cells. Each row is convex, with at most 3 non-zero weights."""
    eye = torch.eye(cells, dtype=like.dtype, device=like.device)
    up = aligned_bilinear(eye[None, :, :, None], stride)[:, :, :crop]
    return F.interpolate(up[..., :1], size=(out, 1), mode='bilinear',
                         align_corners=False)[0, :, :, 0].T


def _nonzero_span(weights: Tensor) -> Tuple[Tensor, Tensor]:
    """First and last (inclusive) non-zero column of each row, (rows,)."""
    nz = weights > 0
    idx = torch.arange(weights.size(1), device=weights.device)
    first = torch.where(nz, idx, weights.size(1)).amin(dim=1)
    last = torch.where(nz, idx, -1).amax(dim=1)
    return first, last


def _support_span(weights: Tensor, hit: Tensor) -> Tensor:
    """Output range [start, stop) per detection outside which every value
    is a convex combination of cells at or below the threshold: (N, 2).
    ``hit`` (N, cells) marks the cells above it along this axis."""
    reach = ((weights > 0).to(weights.dtype) @ hit.to(weights.dtype).T) > 0
    idx = torch.arange(weights.size(0), device=weights.device)[:, None]
    start = torch.where(reach, idx, weights.size(0)).amin(dim=0)
    stop = torch.where(reach, idx + 1, 0).amax(dim=0)
    return torch.stack([start, torch.maximum(stop, start)], dim=1)


def resample_aligned_bilinear(prob: Tensor, stride: int,
                              img_shape: Tuple[int, int],
                              out_shape: Tuple[int, int]) -> Tensor:
    """The authors' placement of p (see :func:`paste_masks_aligned_bilinear`)
    as probabilities: W_y P W_x^T, (N, h, w) -> (N, out_h, out_w) float,
    the values that function thresholds.

    Args:
        prob (Tensor): Mask probabilities (N, h, w) at ``stride`` of the
            padded input.
        stride (int): Stride of ``prob``.
        img_shape (tuple[int, int]): (img_h, img_w), the un-padded input
            size to crop to.
        out_shape (tuple[int, int]): (out_h, out_w), the output size.

    Returns:
        Tensor: (N, out_h, out_w) resampled probabilities.
    """
    # float32 under autocast: matmuls are autocast-eligible, and these
    # values meet the mask threshold
    with torch.autocast(prob.device.type, enabled=False):
        prob = prob.float()
        weight_y = _aligned_axis_weights(prob.size(1), stride, img_shape[0],
                                         out_shape[0], prob)
        weight_x = _aligned_axis_weights(prob.size(2), stride, img_shape[1],
                                         out_shape[1], prob)
        return weight_y @ prob @ weight_x.T


def paste_masks_aligned_bilinear(prob: Tensor, stride: int,
                                 img_shape: Tuple[int, int],
                                 out_shape: Tuple[int, int], threshold: float,
                                 boxes: Optional[Tensor] = None,
                                 box_padding: float = 0.) -> Tensor:
    """The authors' placement (AdelaiDet ``EmbedMask.postprocess``): p (N, h,
    w) at ``stride`` -> ``aligned_bilinear`` x stride (cell k on pixel
    stride k + stride // 2) -> crop to ``img_shape`` -> bilinear
    (align_corners=False) to ``out_shape`` -> p > threshold, optionally
    cropped to ``boxes``. (N, out_h, out_w) bool.

    The pipeline is separable and linear: m = W_y P W_x^T with per-axis
    weights from the same ops, evaluated per detection only on the output
    rectangle its above-threshold cells reach (elsewhere m <= threshold).

    Args:
        prob (Tensor): Mask probabilities (N, h, w) at ``stride`` of the
            padded input.
        stride (int): Stride of ``prob`` (the ``aligned_bilinear``
            factor).
        img_shape (tuple[int, int]): (img_h, img_w), the un-padded input
            size to crop to.
        out_shape (tuple[int, int]): (out_h, out_w), the output size.
        threshold (float): A pixel is foreground when its resampled p is
            greater than this.
        boxes (Tensor, optional): Boxes (N, 4) (x1, y1, x2, y2) in output
            coordinates to crop to. Defaults to None (no crop).
        box_padding (float): Margin around the boxes, in output pixels.
            Defaults to 0.

    Returns:
        Tensor: (N, out_h, out_w) bool.
    """
    num = prob.size(0)
    masks = zero_masks((num, *out_shape), prob)
    if num == 0 or out_shape[0] * out_shape[1] == 0:
        return masks
    keep = box_keep(boxes, box_padding, out_shape) \
        if boxes is not None else None
    # float32 under autocast (see resample_aligned_bilinear)
    with torch.autocast(prob.device.type, enabled=False):
        _paste_aligned_spans(prob.float(), stride, img_shape, out_shape,
                             threshold, masks, keep)
    return masks


def _paste_aligned_spans(prob: Tensor, stride: int, img_shape: Tuple[int, int],
                         out_shape: Tuple[int, int], threshold: float,
                         masks: Tensor,
                         keep: Optional[Tuple[Tensor, Tensor]] = None
                         ) -> None:
    """Writes W_y P W_x^T > threshold of each detection into ``masks``
    (N, out_h, out_w), on the rectangle its above-threshold cells reach,
    within :func:`box_keep`'s rows and columns ``keep`` if given."""
    h, w = prob.shape[1:]
    weight_y = _aligned_axis_weights(h, stride, img_shape[0], out_shape[0],
                                     prob)
    weight_x = _aligned_axis_weights(w, stride, img_shape[1], out_shape[1],
                                     prob)
    above = prob > threshold
    span_y = _support_span(weight_y, above.any(dim=2)).tolist()
    span_x = _support_span(weight_x, above.any(dim=1)).tolist()
    first_y, last_y = (t.tolist() for t in _nonzero_span(weight_y))
    first_x, last_x = (t.tolist() for t in _nonzero_span(weight_x))
    for n, ((y0, y1), (x0, x1)) in enumerate(zip(span_y, span_x)):
        if y1 <= y0 or x1 <= x0:
            continue
        cy0, cy1 = first_y[y0], last_y[y1 - 1] + 1
        cx0, cx1 = first_x[x0], last_x[x1 - 1] + 1
        vals = weight_y[y0:y1, cy0:cy1] @ prob[n, cy0:cy1, cx0:cx1] @ \
            weight_x[x0:x1, cx0:cx1].T
        window = masks[n, y0:y1, x0:x1]
        torch.gt(vals, threshold, out=window)
        if keep is not None:
            window &= keep[0][n, y0:y1, None] & keep[1][n, None, x0:x1]
