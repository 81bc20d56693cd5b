"""Masks at the output resolution from per-detection probabilities at a
stride of the padded input: bilinear resampling, threshold, optional crop.

Shapes: N detections, (h, w) cells at ``stride``, (out_h, out_w) output.
"""
import math
import mmap
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

# floats resampled per chunk of detections (test_cfg.max_paste_elements): 8 MB
# stays in the CPU's cache; 2**25 was 1.7x slower at 100 dets x 800x1333
MAX_PASTE_ELEMENTS = 2**21
# floats of one strip of output rows in the region path's vertical blend (1
# MB: the mask step's transient memory, in the CPU's cache)
STRIP_ELEMENTS = 2**18
# the region path does ~4 passes over its pixels, the whole-image resampling
# ~2 over every pixel: above this share of the image, resample all of it
MAX_REGION_FRACTION = 0.3


def chunk_size(max_elements: int, per_item: int) -> int:
    """Items per chunk so that a chunk holds at most ``max_elements``
    floats, ``per_item`` each (at least one item per chunk)."""
    return max(1, max_elements // max(per_item, 1))


def _cells_and_scale(stride: int, img_shape: Tuple[int, int],
                     out_shape: Tuple[int, int], h: int, w: int):
    # rows/cols of cells that cover the image, one more for the bilinear
    # neighbour at its border
    h = min(h, math.ceil(img_shape[0] / stride) + 1)
    w = min(w, math.ceil(img_shape[1] / stride) + 1)
    # an explicit scale (not recomputed from sizes) maps output pixel
    # centres onto cell centres exactly
    scale = (stride * out_shape[0] / img_shape[0],
             stride * out_shape[1] / img_shape[1])
    return h, w, scale


def _pad_cells(maps: Tensor, h: int, w: int) -> Tensor:
    # one replicated row/col more so that floor(h * scale) never rounds to
    # out_h - 1 on an unpadded side
    return F.pad(maps[None, :, :h, :w], (0, 1, 0, 1), mode='replicate')[0]


def resample_to_output(maps: Tensor, stride: int, img_shape: Tuple[int, int],
                       out_shape: Tuple[int, int]) -> Tensor:
    """Bilinearly resamples (C, h, w) maps of the padded input at stride
    ``stride`` to (C, out_h, out_w) covering the un-padded ``img_shape``.

    Only the cells covering ``img_shape`` (plus one for the bilinear
    neighbour) are used; the scale stride x out / img is set explicitly
    (``align_corners=False``) so output pixel centres map onto cell centres.

    Args:
        maps (Tensor): Maps (C, h, w) at ``stride`` of the padded input.
        stride (int): Stride of the maps.
        img_shape (tuple[int, int]): (img_h, img_w), the un-padded input
            size the output covers.
        out_shape (tuple[int, int]): (out_h, out_w), the output size.

    Returns:
        Tensor: Resampled maps (C, out_h, out_w).
    """
    h, w, scale = _cells_and_scale(stride, img_shape, out_shape,
                                   maps.size(1), maps.size(2))
    return F.interpolate(
        _pad_cells(maps, h, w)[None], scale_factor=scale, mode='bilinear',
        align_corners=False,
        recompute_scale_factor=False)[0, :, :out_shape[0], :out_shape[1]]


# the FCOS repo's log p outside a detection's window (inference.py)
WINDOW_FILL = -10.


def window_log_prob(log_prob: Tensor, boxes: Tensor, stride: int,
                    padding: int = 2, fill: float = WINDOW_FILL) -> Tensor:
    """The FCOS repo's test-time support of a mask: log p kept in the cells
    [int(x1 / s) - pad, int(x2 / s) + pad) x [int(y1 / s) - pad,
    int(y2 / s) + pad) (clamped to the map, end exclusive), ``fill``
    elsewhere; the map is then resampled as log p (``inference.py``
    ``compute_mask_prob``).

    Args:
        log_prob (Tensor): log p (N, h, w) at ``stride``.
        boxes (Tensor): Detections (N, 4) in input pixels, >= 0.
        stride (int): Stride of ``log_prob``.
        padding (int): Cells added on each side. Defaults to 2.
        fill (float): log p outside the window. Defaults to -10.

    Returns:
        Tensor: (N, h, w), a new tensor.
    """
    height, width = log_prob.shape[-2:]
    # int() of the authors' non-negative boxes is a floor
    cells = torch.div(boxes, stride, rounding_mode='floor').long()
    x1 = (cells[:, 0] - padding).clamp(min=0)
    y1 = (cells[:, 1] - padding).clamp(min=0)
    x2 = (cells[:, 2] + padding).clamp(max=width)
    y2 = (cells[:, 3] + padding).clamp(max=height)
    xs = torch.arange(width, device=log_prob.device)
    ys = torch.arange(height, device=log_prob.device)
    inside = ((ys >= y1[:, None]) & (ys < y2[:, None]))[:, :, None] & \
        ((xs >= x1[:, None]) & (xs < x2[:, None]))[:, None, :]
    return torch.where(inside, log_prob, log_prob.new_tensor(fill))


def box_keep(boxes: Tensor, padding: float, out_shape: Tuple[int, int]
             ) -> Tuple[Tensor, Tensor]:
    """The crop-to-box rule, per axis: row i (column j) of a box is kept
    when its pixel centre i + 0.5 (j + 0.5) lies in [y1 - padding, y2 +
    padding] ([x1 - padding, x2 + padding]); a pixel is kept when both are.

    Args:
        boxes (Tensor): Boxes (N, 4) as (x1, y1, x2, y2) in output pixels.
        padding (float): Margin around each box, in pixels.
        out_shape (tuple[int, int]): (out_h, out_w) of the masks.

    Returns:
        tuple[Tensor, Tensor]: (N, out_h) and (N, out_w) bool.
    """
    ys = torch.arange(out_shape[0], device=boxes.device) + 0.5
    xs = torch.arange(out_shape[1], device=boxes.device) + 0.5
    b = boxes[:, :, None]
    return ((ys >= b[:, 1] - padding) & (ys <= b[:, 3] + padding),
            (xs >= b[:, 0] - padding) & (xs <= b[:, 2] + padding))


def crop_masks_to_boxes(masks: Tensor, boxes: Tensor, padding: float,
                        max_elements: Optional[int] = None) -> Tensor:
    """Clears (in place) mask pixels farther than ``padding`` outside their
    box (the rule of :func:`box_keep`); masks (N, H, W) bool, boxes (N, 4)
    in the masks' coordinates.

    Args:
        masks (Tensor): Masks (N, H, W) bool, modified in place.
        boxes (Tensor): Boxes (N, 4) as (x1, y1, x2, y2) in pixels of the
            masks.
        padding (float): Margin around each box, in pixels.
        max_elements (int, optional): Mask pixels per chunk of masks (the
            in-box map is as large as the chunk); None: all at once.

    Returns:
        Tensor: ``masks`` itself, (N, H, W) bool.
    """
    in_y, in_x = box_keep(boxes, padding, masks.shape[1:])
    step = len(masks) if max_elements is None else \
        chunk_size(max_elements, masks.size(1) * masks.size(2))
    for i in range(0, len(masks), max(step, 1)):
        chunk = masks[i:i + step]  # a view: cleared in place
        chunk &= in_y[i:i + step, :, None] & in_x[i:i + step, None, :]
    return masks


# bytes from which zero_masks maps fresh pages instead of filling memory
LAZY_ZEROS_BYTES = 1 << 20


def zero_masks(shape: Tuple[int, ...], like: Tensor) -> Tensor:
    """An all-background bool tensor of ``shape`` on ``like``'s device.

    On a CPU, a large one is a private anonymous memory map: the kernel
    supplies zeroed pages on first write, so masks written only inside
    their support rectangles cost memory and time in proportion to those
    rectangles, not to N x H x W (74 masks of 4000x3000: 888 MB filled,
    against the pages the rectangles' rows touch). Elsewhere, and where
    ``mmap`` has no private anonymous maps (Windows), ``new_zeros``.
    """
    nbytes = math.prod(shape)
    flags = getattr(mmap, 'MAP_PRIVATE', None), \
        getattr(mmap, 'MAP_ANONYMOUS', None)
    if like.device.type != 'cpu' or nbytes < LAZY_ZEROS_BYTES or \
            None in flags:
        return like.new_zeros(shape, dtype=torch.bool)
    # the tensor holds the map (frombuffer keeps its buffer alive)
    buffer = mmap.mmap(-1, nbytes, flags=flags[0] | flags[1])
    return torch.frombuffer(buffer, dtype=torch.bool).view(shape)


def _axis_taps(cells: int, out: int, scale: float, like: Tensor):
    """Per output pixel of one axis: the two cells F.interpolate blends and
    their weights, read off F.interpolate itself (one-hot cells resampled)
    so that both paths sample the same points. (out,) each."""
    eye = torch.eye(cells, dtype=like.dtype, device=like.device)
    weights = F.interpolate(
        eye[None, :, :, None], scale_factor=(scale, 1.), mode='bilinear',
        align_corners=False, recompute_scale_factor=False)[0, :, :out, 0].T
    i0 = (weights > 0).int().argmax(dim=1)  # the first tap always weighs > 0
    i1 = (i0 + 1).clamp(max=cells - 1)
    w0 = weights.gather(1, i0[:, None].long())[:, 0]
    w1 = torch.where(i1 > i0, weights.gather(1, i1[:, None].long())[:, 0],
                     weights.new_zeros(()))
    return i0.long(), i1.long(), w0, w1


def _support_regions(cells: Tensor, threshold: float, taps_y, taps_x):
    """Output rectangles [y0, y1) x [x0, x1) outside which the resampled
    masks are surely background: a bilinear value is a convex combination of
    its cells, so it exceeds the threshold only next to a cell that does.
    (N, 4) int64 and (N,) bool (any cell above the threshold)."""
    above = cells > threshold
    found = above.flatten(1).any(dim=1)
    bounds = []
    for axis, (i0, _, _, _) in ((2, taps_y), (1, taps_x)):
        hit = above.any(dim=axis)  # (N, cells along the other axis)
        idx = torch.arange(hit.size(1), device=hit.device)
        first = torch.where(hit, idx, hit.size(1)).amin(dim=1)
        last = torch.where(hit, idx, -1).amax(dim=1)
        # output pixels whose first tap is in [first - 1, last]
        bounds += [torch.searchsorted(i0, first - 1, side='left'),
                   torch.searchsorted(i0, last, side='right')]
    y0, y1, x0, x1 = bounds
    return torch.stack([y0, y1, x0, x1], dim=1), found


def _window_starts(first: Tensor, size: int, limit: int) -> Tensor:
    # windows of ``size`` starting at ``first``, shifted back to end by
    # ``limit``: values inside a window are exact wherever it lies
    return torch.minimum(first, first.new_tensor(limit - size)).clamp(min=0)


def _paste_group(cells: Tensor, threshold: float, taps_y, taps_x,
                 inds: Tensor, rects: Tensor, masks: Tensor,
                 keep: Optional[Tuple[Tensor, Tensor]] = None) -> None:
    """Resamples detections ``inds`` in windows of one size (the largest of
    their rectangles ``rects``, (G, 4)) and writes them to ``masks``: a
    window larger than a rectangle only adds exact background. ``keep``:
    :func:`box_keep`'s rows and columns, applied in the windows."""
    iy0, iy1, wy0, wy1 = taps_y
    ix0, ix1, wx0, wx1 = taps_x
    out_h, out_w = masks.shape[1:]
    num = len(inds)
    win_h = int((rects[:, 1] - rects[:, 0]).max())
    win_w = int((rects[:, 3] - rects[:, 2]).max())
    ys = _window_starts(rects[:, 0], win_h, out_h)[:, None] + \
        torch.arange(win_h, device=cells.device)  # (G, win_h)
    xs = _window_starts(rects[:, 2], win_w, out_w)[:, None] + \
        torch.arange(win_w, device=cells.device)  # (G, win_w)
    # the cell rows the windows' taps read, in windows of one size too
    row_first = iy0[ys[:, 0]]
    num_rows = int((iy1[ys[:, -1]] + 1 - row_first).max())
    rows = _window_starts(row_first, num_rows, cells.size(1))[:, None] + \
        torch.arange(num_rows, device=cells.device)  # (G, num_rows)
    block = cells[inds[:, None], rows]  # (G, num_rows, w)

    # horizontal blend at the cell rows, then vertical: separable bilinear
    # in F.interpolate's order (the same float ops as the whole image)
    def cols(idx):
        return block.gather(2, idx[xs][:, None, :].expand(-1, num_rows, -1))
    blended = (cols(ix0) * wx0[xs][:, None] +
               cols(ix1) * wx1[xs][:, None]).view(num * num_rows, win_w)
    # each output row is two whole rows of ``blended``, copied by row, in
    # strips of rows: the floats alive stay within STRIP_ELEMENTS, however
    # large the windows
    offset = torch.arange(num, device=cells.device)[:, None] * num_rows - \
        rows[:, :1]
    starts = list(zip(inds.tolist(), ys[:, 0].tolist(), xs[:, 0].tolist()))
    strip = chunk_size(STRIP_ELEMENTS, num * win_w)
    for top in range(0, win_h, strip):
        strip_ys = ys[:, top:top + strip]
        height = strip_ys.size(1)

        def rows_of(idx, weight):
            picked = blended.index_select(
                0, (idx[strip_ys] + offset).flatten())
            return picked.view(num, height, win_w).mul_(
                weight[strip_ys][:, :, None])
        foreground = rows_of(iy0, wy0).add_(rows_of(iy1, wy1)) > threshold
        # windows are ranges: sliced writes touch only their rows' pages
        for g, (n, y0, x0) in enumerate(starts):
            y0 += top
            window = foreground[g]
            if keep is not None:
                window &= keep[0][n, y0:y0 + height, None] & \
                    keep[1][n, None, x0:x0 + win_w]
            masks[n, y0:y0 + height, x0:x0 + win_w] = window


def _paste_regions(cells: Tensor, threshold: float, taps_y, taps_x,
                   rects: Tensor, todo: Tensor, masks: Tensor,
                   max_elements: int,
                   keep: Optional[Tuple[Tensor, Tensor]] = None) -> Tensor:
    """Resamples and thresholds the detections marked in ``todo`` inside
    their rectangles only; ``masks`` (N, out_h, out_w) must be zero outside.

    Detections are batched by rectangle size (classes of sqrt(2) per side,
    so a window wastes at most half its area) in groups of at most
    ``max_elements`` floats: the number of groups depends on how the sizes
    spread, not on the number of detections."""
    height = rects[:, 1] - rects[:, 0]
    width = rects[:, 3] - rects[:, 2]
    todo = todo.to(rects.device) & (height > 0) & (width > 0)
    inds = todo.nonzero()[:, 0]
    if not len(inds):
        return masks
    size_class = torch.stack([
        torch.ceil(2 * torch.log2(height[inds].float())),
        torch.ceil(2 * torch.log2(width[inds].float()))], dim=1).long()
    classes, which = torch.unique(size_class, dim=0, return_inverse=True)
    order = torch.argsort(which, stable=True)
    counts = torch.bincount(which, minlength=len(classes)).tolist()
    for group in inds[order].split(counts):
        rect = rects[group]
        area = int((rect[:, 1] - rect[:, 0]).max()) * \
            int((rect[:, 3] - rect[:, 2]).max())
        step = chunk_size(max_elements, area)
        for chunk in group.split(step):
            _paste_group(cells, threshold, taps_y, taps_x, chunk,
                         rects[chunk], masks, keep)
    return masks


def paste_masks(prob: Tensor, stride: int, img_shape: Tuple[int, int],
                out_shape: Tuple[int, int], threshold: float,
                boxes: Optional[Tensor] = None, box_padding: float = 0.,
                max_elements: int = MAX_PASTE_ELEMENTS,
                regions: Optional[bool] = None) -> Tensor:
    """Resamples stride-``stride`` probabilities (N, h, w) of the padded input
    to ``out_shape`` and thresholds them.

    ``img_shape`` is the un-padded input size the output covers. With
    ``boxes`` (N, 4) in output coordinates, pixels farther than
    ``box_padding`` outside a box are background.

    Two exact paths (the same sampling points and weights): whole images in
    chunks of detections, or, with ``regions`` (default: on CPU), each
    detection only inside the rectangle around its cells above
    ``threshold`` (the rest is background without being computed); a
    detection whose rectangle covers more than ``MAX_REGION_FRACTION`` of the
    image takes the whole-image path. On a GPU the whole-image kernel is
    faster than a loop over detections.

    Args:
        prob (Tensor): Mask probabilities (N, h, w) at ``stride`` of the
            padded input.
        stride (int): Stride of ``prob``.
        img_shape (tuple[int, int]): (img_h, img_w), the un-padded input
            size the output covers.
        out_shape (tuple[int, int]): (out_h, out_w), the output size.
        threshold (float): A pixel is foreground when its resampled p is
            greater than this.
        boxes (Tensor, optional): Boxes (N, 4) (x1, y1, x2, y2) in output
            coordinates to crop to. Defaults to None (no crop).
        box_padding (float): Margin around the boxes, in output pixels.
            Defaults to 0.
        max_elements (int): Floats resampled per chunk of detections.
            Defaults to ``MAX_PASTE_ELEMENTS``.
        regions (bool, optional): Use the per-detection region path; None:
            on CPU only. Defaults to None.

    Returns:
        Tensor: (N, out_h, out_w) bool.
    """
    num = prob.size(0)
    out_h, out_w = out_shape
    if regions is None:
        regions = prob.device.type == 'cpu'
    keep = box_keep(boxes, box_padding, out_shape) \
        if boxes is not None else None
    # host-side selection of the detections pasted whole (indices in Python)
    full = torch.ones(num, dtype=torch.bool, device='cpu')
    if regions and num and out_h * out_w:
        h, w, scale = _cells_and_scale(stride, img_shape, out_shape,
                                       prob.size(1), prob.size(2))
        cells = _pad_cells(prob, h, w)
        taps_y = _axis_taps(h + 1, out_h, scale[0], cells)
        taps_x = _axis_taps(w + 1, out_w, scale[1], cells)
        rects, found = _support_regions(cells, threshold, taps_y, taps_x)
        area = (rects[:, 1] - rects[:, 0]).clamp(min=0) * \
            (rects[:, 3] - rects[:, 2]).clamp(min=0)
        full = (found & (area > MAX_REGION_FRACTION * out_h * out_w)).cpu()
        masks = zero_masks((num, out_h, out_w), prob)
        _paste_regions(cells, threshold, taps_y, taps_x, rects,
                       found.cpu() & ~full, masks, max_elements, keep)
    else:
        # every element is written by the loop below: no zero fill needed
        masks = prob.new_empty((num, out_h, out_w), dtype=torch.bool)
    inds = full.nonzero()[:, 0].tolist()
    chunk = chunk_size(max_elements, out_h * out_w)
    for i in range(0, len(inds), chunk):
        sel = inds[i:i + chunk]
        foreground = resample_to_output(prob[sel], stride, img_shape,
                                        out_shape) > threshold
        if keep is not None:
            foreground &= keep[0][sel, :, None] & keep[1][sel, None, :]
        sl = slice(sel[0], sel[-1] + 1)
        if len(sel) == sl.stop - sl.start:  # consecutive: a sliced write
            masks[sl] = foreground
        else:
            masks[sel] = foreground
    return masks
