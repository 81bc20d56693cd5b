"""Large images of the built-in synthetic shapes, for sliced inference.

A large canvas (e.g. 2112 x 2112) holds a few hundred shapes drawn exactly
as :mod:`.synthetic_coco` draws them (same background, painting, classes and
object sizes in pixels), so a model trained on the 320 x 320 set sees objects
at its training scale in 320-pixel tiles. Half of the objects are centred in
the overlap bands of a tiling (tile ``T``, overlap ``r``: tiles start every
``T - int(r T)`` pixels, the last one flush with the border, as SAHI's
``get_slice_bboxes`` places them): an object there that is wider than the
overlap lies inside no tile at all, which is the case sliced inference has to
join.

Shapes are rasterised in a window around each object (not on the full canvas)
so memory stays a few canvases whatever the object count. Masks are the
visible pixels (z-order resolved, no overlaps) stored as RLE.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmengine.logging import print_log

from .synthetic_coco import (_CLASS_MIN_SIDE, _JPEG_QUALITY,
                             _MIN_VISIBLE_AREA, _MIN_VISIBLE_RATIO,
                             SYNTHETIC_CLASSES, _background, _bbox, _box,
                             _check_int, _paint, _rle, _shape_geometry)

# object sides in pixels, log-uniform: the 320-px training set's range
# (8 to 0.7 x 320) trimmed at both ends so most objects are recognisable
# and fit in a tile
_SIDE_RANGE = (10.0, 160.0)
_OBJECTS_PER_MPIX = 50.0
_CROSSING_FRACTION = 0.5


def tile_starts(length: int, tile: int, overlap: float) -> List[int]:
    """Start offsets of the tiles along one axis, SAHI's rule.

    Tiles start every ``tile - int(overlap * tile)`` pixels; a tile that
    would pass the border is moved back to end on it.
    """
    if tile >= length:
        return [0]
    step = tile - int(overlap * tile)
    if step <= 0:
        raise ValueError(f'overlap {overlap} leaves no step for tile {tile}')
    starts, s = [], 0
    while True:
        if s + tile >= length:
            starts.append(length - tile)
            break
        starts.append(s)
        s += step
    return sorted(set(starts))


def overlap_band_centres(length: int, tile: int,
                         overlap: float) -> List[float]:
    """Centres of the bands where neighbouring tiles overlap."""
    starts = tile_starts(length, tile, overlap)
    return [(b + a + tile) / 2.0 for a, b in zip(starts, starts[1:])]


def inside_no_tile(bboxes: np.ndarray, size: Tuple[int, int],
                   tile: Tuple[int, int], overlap: float) -> np.ndarray:
    """Which ``[x, y, w, h]`` boxes no tile contains whole (bool, (N,)).

    ``size`` and ``tile`` are ``(width, height)``.
    """
    bboxes = np.asarray(bboxes, np.float64).reshape(-1, 4)
    x0, y0 = bboxes[:, 0], bboxes[:, 1]
    x1, y1 = x0 + bboxes[:, 2], y0 + bboxes[:, 3]
    xs = np.array(tile_starts(size[0], tile[0], overlap), np.float64)
    ys = np.array(tile_starts(size[1], tile[1], overlap), np.float64)
    in_x = (xs[None] <= x0[:, None]) & (x1[:, None] <= xs[None] + tile[0])
    in_y = (ys[None] <= y0[:, None]) & (y1[:, None] <= ys[None] + tile[1])
    return ~(in_x.any(1) & in_y.any(1))


def _place(rng, w, h, side, bands_x, bands_y):
    """A centre: uniform, or in an overlap band (x, y or both)."""
    # as the 320-px set: the centre far enough inside that truncation by
    # the image border stays mild
    m = 0.35 * side
    cx, cy = rng.uniform(m, w - m), rng.uniform(m, h - m)
    if rng.random() < _CROSSING_FRACTION and (bands_x or bands_y):
        mode = rng.integers(3)  # vertical band, horizontal band, crossing
        jitter = 0.15 * side
        if mode != 1 and bands_x:
            cx = bands_x[rng.integers(len(bands_x))] + \
                rng.uniform(-jitter, jitter)
        if mode != 0 and bands_y:
            cy = bands_y[rng.integers(len(bands_y))] + \
                rng.uniform(-jitter, jitter)
    return cx, cy


def render_large_image(rng: np.random.Generator, size: Tuple[int, int],
                       tile: Tuple[int, int] = (320, 320),
                       overlap: float = 0.2) -> Dict:
    """Draw one large image.

    Returns a dict: ``img`` (uint8 BGR, H x W x 3), ``background`` (the
    float32 background before any object was painted) and ``anns`` (COCO
    annotation dicts without ids: RLE ``segmentation`` of the visible
    pixels, ``bbox``, ``area``, ``category_id``, ``iscrowd``).
    """
    w, h = size
    bg = _background(rng, h, w)
    bands_x = overlap_band_centres(w, tile[0], overlap)
    bands_y = overlap_band_centres(h, tile[1], overlap)
    n = int(rng.poisson(_OBJECTS_PER_MPIX * w * h / 1e6))
    lo, hi = np.log(_SIDE_RANGE[0]), np.log(_SIDE_RANGE[1])
    objs = []
    for _ in range(n):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        name = SYNTHETIC_CLASSES[label]
        s = max(float(np.exp(rng.uniform(lo, hi))),
                _CLASS_MIN_SIDE.get(name, 0.0))
        cx, cy = _place(rng, w, h, s, bands_x, bands_y)
        # every shape lies within 0.71 side of its centre (a rectangle's
        # corner); the window is clipped to the canvas, which truncates a
        # shape exactly as rasterising it on the full canvas would
        reach = 0.75 * s + 2
        wx0, wy0 = max(int(cx - reach), 0), max(int(cy - reach), 0)
        wx1, wy1 = min(int(np.ceil(cx + reach)), w), \
            min(int(np.ceil(cy + reach)), h)
        if wx1 - wx0 < 2 or wy1 - wy0 < 2:
            continue
        _, full = _shape_geometry(name, cx - wx0, cy - wy0, s, rng,
                                  wy1 - wy0, wx1 - wx0)
        area = int(full.sum())
        if area < _MIN_VISIBLE_AREA + 4:
            continue
        objs.append(dict(label=label, full=full, side=s, area=area,
                         win=(wy0, wy1, wx0, wx1)))
    if rng.random() < 0.5:
        objs.sort(key=lambda o: -o['side'])

    def visible(items):
        """Visible part of each window mask: later objects cover earlier."""
        covered = np.zeros((h, w), bool)
        out = [None] * len(items)
        for i in range(len(items) - 1, -1, -1):
            y0, y1, x0, x1 = items[i]['win']
            full = items[i]['full']
            out[i] = full & ~covered[y0:y1, x0:x1]
            covered[y0:y1, x0:x1] |= full
        return out

    vis = visible(objs)
    keep = [o for o, v in zip(objs, vis) if int(v.sum()) >= max(
        _MIN_VISIBLE_AREA, _MIN_VISIBLE_RATIO * o['area'])]
    # dropping objects only uncovers others, so one more pass suffices
    vis = visible(keep)
    img = bg.copy()
    anns = []
    for o, v in zip(keep, vis):
        y0, y1, x0, x1 = o['win']
        _paint(img[y0:y1, x0:x1], bg[y0:y1, x0:x1], o['full'],
               _box(o['full']), rng)
        canvas = np.zeros((h, w), bool)
        canvas[y0:y1, x0:x1] = v
        anns.append(dict(category_id=o['label'] + 1, segmentation=_rle(canvas),
                         area=float(v.sum()), bbox=_bbox(canvas), iscrowd=0))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return dict(img=img, background=bg, anns=anns)


def generate_large_synthetic_coco(out_dir: str,
                                  num_images: int = 4,
                                  seed: int = 0,
                                  size: Tuple[int, int] = (2112, 2112),
                                  tile: Sequence[int] = (320, 320),
                                  overlap: float = 0.2,
                                  logger: Optional[str] = 'current') -> dict:
    """Write ``num_images`` large images and their COCO json.

    Layout: ``images/{idx:06d}.jpg`` and ``annotations/instances.json``
    under ``out_dir``. ``size`` and ``tile`` are ``(width, height)``; the
    default 2112 = 320 + 7 x 256 makes SAHI's 320-pixel tiles at overlap
    0.2 (step 256) cover the image evenly. Byte-identical output for
    identical arguments. Returns counts, including how many objects no
    tile of (``tile``, ``overlap``) holds whole.
    """
    num_images = _check_int('num_images', num_images, 1)
    seed = _check_int('seed', seed, 0)
    if len(size) != 2 or len(tile) != 2:
        raise ValueError(f'size and tile must be (width, height), got '
                         f'{size!r} and {tile!r}')
    w = _check_int('width', size[0], 32)
    h = _check_int('height', size[1], 32)
    tile = (_check_int('tile width', tile[0], 32),
            _check_int('tile height', tile[1], 32))
    if not 0 <= overlap < 1:
        raise ValueError(f'overlap must be in [0, 1), got {overlap}')
    img_dir = osp.join(out_dir, 'images')
    ann_dir = osp.join(out_dir, 'annotations')
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(ann_dir, exist_ok=True)
    images, annotations = [], []
    cut = 0
    for idx in range(num_images):
        rng = np.random.default_rng([seed, 7, idx])
        drawn = render_large_image(rng, (w, h), tile, overlap)
        fname = f'{idx:06d}.jpg'
        path = osp.join(img_dir, fname)
        if not cv2.imwrite(path, drawn['img'],
                           [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f'could not write {path}')
        images.append(dict(id=idx + 1, file_name=fname, width=w, height=h))
        for ann in drawn['anns']:
            ann.update(id=len(annotations) + 1, image_id=idx + 1)
            annotations.append(ann)
        if drawn['anns']:
            cut += int(inside_no_tile([a['bbox'] for a in drawn['anns']],
                                      (w, h), tile, overlap).sum())
    coco = dict(images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=n, supercategory='shape')
                            for i, n in enumerate(SYNTHETIC_CLASSES)])
    with open(osp.join(ann_dir, 'instances.json'), 'w') as f:
        json.dump(coco, f, sort_keys=True, separators=(',', ':'))
    stats = dict(images=num_images, instances=len(annotations),
                 inside_no_tile=cut)
    print_log(f'large synthetic COCO written to {out_dir} ({w}x{h}, seed '
              f'{seed}, tiles {tile[0]}x{tile[1]} overlap {overlap}): '
              f'{stats}', logger=logger)
    return stats
