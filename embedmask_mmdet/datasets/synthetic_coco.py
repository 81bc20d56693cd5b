"""A deterministic, self-contained COCO-format instance-segmentation dataset.

Images hold coloured shapes on cluttered backgrounds. Masks are exact: every
polygon shape *is* pycocotools' rasterisation of the stored polygon (the same
routine COCO and mmdet use to decode it), and occlusion is resolved in z-order
so the stored masks are the visible pixels and never overlap.
"""
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from mmengine.logging import print_log
from pycocotools import mask as mask_util

SYNTHETIC_CLASSES = ('circle', 'rectangle', 'triangle', 'ellipse', 'ring',
                     'star')

_JPEG_QUALITY = 92
_EMPTY_FRACTION = 0.07
_CROWDED_FRACTION = 0.2
_MIN_VISIBLE_AREA = 20
_MIN_VISIBLE_RATIO = 0.25
_MIN_SIDE = 8.0
# Tiny rings and stars are unrecognisable blobs, so they start bigger.
_CLASS_MIN_SIDE = {'ring': 14.0, 'star': 16.0}
_SPLIT_IDS = {'train': 0, 'val': 1}


def _raster(poly: List[float], h: int, w: int) -> np.ndarray:
    """Rasterise one polygon exactly as COCO / mmdet decode it."""
    rle = mask_util.frPyObjects([poly], h, w)[0]
    return mask_util.decode(rle).astype(bool)


def _rle(mask: np.ndarray) -> dict:
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return dict(size=[int(mask.shape[0]), int(mask.shape[1])],
                counts=rle['counts'].decode('utf-8'))


def _to_poly(xs: np.ndarray, ys: np.ndarray) -> List[float]:
    # Rounded so the JSON round-trips to exactly the coordinates rasterised.
    pts = np.stack([xs, ys], axis=1).reshape(-1)
    return [round(float(v), 2) for v in pts]


def _regular(cx, cy, radii, angles) -> List[float]:
    return _to_poly(cx + radii * np.cos(angles), cy + radii * np.sin(angles))


def _circle_n(r: float) -> int:
    return int(np.clip(round(r * 1.5), 16, 72))


def _shape_geometry(name: str, cx: float, cy: float, side: float,
                    rng: np.random.Generator, h: int, w: int):
    """Return (polygon or None, full in-image mask) for one shape."""
    theta = rng.uniform(0, 2 * np.pi)
    r = side / 2.0
    if name == 'circle':
        n = _circle_n(r)
        poly = _regular(cx, cy, r, np.linspace(0, 2 * np.pi, n,
                                               endpoint=False))
    elif name == 'ellipse':
        n = _circle_n(r)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        a, b = r, r * rng.uniform(0.35, 0.7)
        x, y = a * np.cos(t), b * np.sin(t)
        c, s = np.cos(theta), np.sin(theta)
        poly = _to_poly(cx + c * x - s * y, cy + s * x + c * y)
    elif name == 'rectangle':
        hw, hh = r, r * rng.uniform(0.35, 1.0)
        x = np.array([-hw, hw, hw, -hw])
        y = np.array([-hh, -hh, hh, hh])
        c, s = np.cos(theta), np.sin(theta)
        poly = _to_poly(cx + c * x - s * y, cy + s * x + c * y)
    elif name == 'triangle':
        ang = theta + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(
            -0.3, 0.3, 3)
        poly = _regular(cx, cy, r * 1.1 * rng.uniform(0.85, 1.0, 3), ang)
    elif name == 'star':
        k = int(rng.integers(5, 7))
        radii = np.tile([r, r * rng.uniform(0.4, 0.55)], k)
        poly = _regular(cx, cy, radii,
                        theta + np.arange(2 * k) * np.pi / k)
    elif name == 'ring':
        n = _circle_n(r)
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        outer = _raster(_regular(cx, cy, r, t), h, w)
        inner = _raster(_regular(cx, cy, r * rng.uniform(0.45, 0.7), t), h,
                        w)
        return None, outer & ~inner
    else:
        raise ValueError(f'unknown shape {name!r}')
    return poly, _raster(poly, h, w)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Gradient + smooth noise + soft blobs + stripes, so colour is no cue.

    The smooth parts are built at quarter resolution and upsampled once;
    only the crisp stripes and pixel noise are made at full resolution.
    """
    q = 4
    hq, wq = -(-h // q), -(-w // q)
    ys, xs = np.mgrid[0:hq, 0:wq].astype(np.float32)
    phi = rng.uniform(0, 2 * np.pi)
    t = xs * np.float32(np.cos(phi)) + ys * np.float32(np.sin(phi))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c0, c1 = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    low = c0 + (c1 - c0) * t[..., None]
    cell = int(rng.integers(6, 33))
    grid = rng.standard_normal((h // cell + 2, w // cell + 2, 3),
                               dtype=np.float32)
    low += cv2.resize(grid, (wq, hq), interpolation=cv2.INTER_CUBIC) * \
        np.float32(rng.uniform(10, 35))
    if rng.random() < 0.7:
        layer = np.zeros((hq, wq, 4), np.float32)
        for _ in range(int(rng.integers(2, 7))):
            centre = (int(rng.integers(0, wq)), int(rng.integers(0, hq)))
            axes = (int(rng.integers(wq // 12 + 1, wq // 3 + 2)),
                    int(rng.integers(hq // 12 + 1, hq // 3 + 2)))
            colour = rng.uniform(0, 255, 3).tolist() + [1.0]
            cv2.ellipse(layer, centre, axes, float(rng.uniform(0, 180)), 0,
                        360, colour, -1)
        layer = cv2.GaussianBlur(layer, (0, 0), rng.uniform(1, 3))
        cover = layer[..., 3:]
        # Normalise by coverage so blob colours stay saturated when blurred.
        blob = layer[..., :3] / np.maximum(cover, 1e-3)
        low += (blob - low) * (np.float32(rng.uniform(0.3, 0.7)) *
                               np.clip(cover, 0, 1))
    # Channel-first from here: broadcasting over a trailing axis of length 3
    # is several times slower in numpy.
    img = cv2.resize(low, (w, h), interpolation=cv2.INTER_LINEAR)
    img = np.ascontiguousarray(img.transpose(2, 0, 1))
    if rng.random() < 0.5:
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        psi = rng.uniform(0, np.pi)
        period = rng.uniform(6, 40)
        phase = (xs * np.float32(np.cos(psi) / period) +
                 ys * np.float32(np.sin(psi) / period))
        stripe = np.sin(np.float32(2 * np.pi) * phase) > rng.uniform(-.5, .5)
        alpha = np.float32(rng.uniform(0.2, 0.5)) * stripe
        colour = rng.uniform(0, 255, 3).astype(np.float32)[:, None, None]
        img += (colour - img) * alpha
    img += rng.integers(-5, 6, (3, h, w), dtype=np.int16)
    return np.ascontiguousarray(img.transpose(1, 2, 0))


def _box(mask: np.ndarray) -> Tuple[int, int, int, int]:
    """Half-open (y0, y1, x0, x1) extent of a non-empty mask."""
    cols, rows = np.flatnonzero(mask.any(0)), np.flatnonzero(mask.any(1))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _paint(img, bg, mask, box, rng):
    """Paint one shaded, noisy object; colour chosen to contrast locally."""
    y0, y1, x0, x1 = box
    sub = mask[y0:y1, x0:x1]
    local = bg[y0:y1, x0:x1][sub].mean(axis=0)
    colour = rng.uniform(0, 255, 3)
    for _ in range(8):
        if np.abs(colour - local).sum() > 90:
            break
        colour = rng.uniform(0, 255, 3)
    hh, ww = y1 - y0, x1 - x0
    gy = np.arange(hh, dtype=np.float32)
    gx = np.arange(ww, dtype=np.float32)
    ang = rng.uniform(0, 2 * np.pi)
    c, s = np.float32(np.cos(ang)), np.float32(np.sin(ang))
    amp = np.float32(rng.uniform(20, 70) / max(hh, ww, 1))
    shade = np.add.outer(gy * (s * amp), gx * (c * amp))
    shade -= shade.mean()
    if rng.random() < 0.2:
        # A second-colour stripe pattern on some objects.
        period = rng.uniform(3, 10)
        stripe = np.sin(np.add.outer(gy * -c, gx * s) *
                        np.float32(2 * np.pi / period)) > 0
        second = rng.uniform(0, 255, 3)
        chans = [shade + np.where(stripe, np.float32((a + b) / 2),
                                  np.float32(a))
                 for a, b in zip(colour, second)]
    else:
        chans = [shade + np.float32(a) for a in colour]
    patch = cv2.merge(chans)
    k = int(rng.integers(3, 11))
    patch += rng.integers(-k, k + 1, (hh, ww, 3), dtype=np.int16)
    # copyTo writes through the ROI view (rows stay contiguous).
    cv2.copyTo(patch, sub.view(np.uint8), img[y0:y1, x0:x1])


def _bbox(mask: np.ndarray) -> List[float]:
    """Tight [x, y, w, h] as pycocotools.mask.toBbox reports it."""
    y0, y1, x0, x1 = _box(mask)
    return [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]


def _make_image(rng: np.random.Generator, h: int, w: int, kind: str):
    """Render one image; return (uint8 BGR image, annotations, dropped)."""
    bg = _background(rng, h, w)
    side = float(min(h, w))
    if kind == 'empty':
        n, max_side = 0, 0.7 * side
    elif kind == 'crowded':
        n, max_side = int(rng.integers(12, 21)), 0.4 * side
    else:
        n, max_side = int(rng.integers(1, 10)), 0.7 * side
    objs = []
    for _ in range(n):
        label = int(rng.integers(len(SYNTHETIC_CLASSES)))
        name = SYNTHETIC_CLASSES[label]
        s = float(np.exp(rng.uniform(np.log(_MIN_SIDE), np.log(max_side))))
        s = max(s, _CLASS_MIN_SIDE.get(name, _MIN_SIDE))
        for _ in range(4):
            # Keep the centre far enough inside that truncation stays mild.
            m = 0.35 * s
            cx = rng.uniform(m, w - m) if w > 2 * m else w / 2.0
            cy = rng.uniform(m, h - m) if h > 2 * m else h / 2.0
            poly, full = _shape_geometry(name, cx, cy, s, rng, h, w)
            area = int(full.sum())
            if area >= _MIN_VISIBLE_AREA + 4:
                objs.append(dict(label=label, poly=poly, full=full, side=s,
                                 area=area, box=_box(full)))
                break
            s *= 1.3
    # Mostly big-below-small so crowded scenes keep their instances, but
    # half the images use random stacking for harder occlusions.
    if rng.random() < 0.5:
        objs.sort(key=lambda o: -o['side'])

    def visible(items):
        owner = np.full((h, w), -1, np.int16)
        for i, o in enumerate(items):
            owner[o['full']] = i
        return [owner == i for i in range(len(items))]

    vis = visible(objs)
    keep = []
    for o, v in zip(objs, vis):
        y0, y1, x0, x1 = o['box']
        n_vis = int(v[y0:y1, x0:x1].sum())
        if n_vis >= max(_MIN_VISIBLE_AREA, _MIN_VISIBLE_RATIO * o['area']):
            keep.append(o)
    dropped = len(objs) - len(keep)
    if dropped:
        # Removing objects only uncovers others, so one pass suffices; the
        # dropped objects are not painted at all, leaving no unlabeled bits.
        vis = visible(keep)
    img = bg.copy()
    anns = []
    for o, v in zip(keep, vis):
        _paint(img, bg, o['full'], o['box'], rng)
        y0, y1, x0, x1 = o['box']
        area = int(v[y0:y1, x0:x1].sum())
        # Visible pixels are a subset of the full mask, so equal counts
        # mean nothing was occluded.
        exact = o['poly'] is not None and area == o['area']
        anns.append(dict(
            category_id=o['label'] + 1,
            segmentation=[o['poly']] if exact else _rle(v),
            area=float(area),
            bbox=_bbox(v),
            iscrowd=0))
    img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return img, anns, dropped


def _write_split(out_dir: str, split: str, num: int, seed: int,
                 size: Tuple[int, int]) -> Dict[str, int]:
    w, h = size
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    split_id = _SPLIT_IDS[split]
    split_rng = np.random.default_rng([seed, split_id, 1 << 20])
    kinds = np.array(['normal'] * num, dtype=object)
    order = split_rng.permutation(num)
    n_empty = int(round(_EMPTY_FRACTION * num))
    n_crowd = int(round(_CROWDED_FRACTION * num))
    kinds[order[:n_empty]] = 'empty'
    kinds[order[n_empty:n_empty + n_crowd]] = 'crowded'

    images, annotations = [], []
    dropped = empty = 0
    for idx in range(num):
        rng = np.random.default_rng([seed, split_id, idx])
        img, anns, n_drop = _make_image(rng, h, w, kinds[idx])
        fname = f'{idx:06d}.jpg'
        ok = cv2.imwrite(osp.join(img_dir, fname), img,
                         [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise OSError(f'could not write {osp.join(img_dir, fname)}')
        images.append(dict(id=idx + 1, file_name=fname, width=w, height=h))
        for ann in anns:
            ann.update(id=len(annotations) + 1, image_id=idx + 1)
            annotations.append(ann)
        dropped += n_drop
        empty += not anns

    coco = dict(
        images=images,
        annotations=annotations,
        categories=[
            dict(id=i + 1, name=n, supercategory='shape')
            for i, n in enumerate(SYNTHETIC_CLASSES)
        ])
    ann_dir = osp.join(out_dir, 'annotations')
    os.makedirs(ann_dir, exist_ok=True)
    with open(osp.join(ann_dir, f'instances_{split}.json'), 'w') as f:
        json.dump(coco, f, sort_keys=True, separators=(',', ':'))
    return dict(images=num, instances=len(annotations), empty_images=empty,
                dropped_occluded=dropped)


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'{name} must be an int, got {value!r}')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')
    return int(value)


def generate_synthetic_coco(out_dir: str,
                            num_train: int,
                            num_val: int,
                            seed: int = 0,
                            size: Tuple[int, int] = (320, 320),
                            logger: Optional[str] = 'current') -> dict:
    """Write the synthetic dataset under ``out_dir`` and return its stats.

    Layout: ``annotations/instances_{train,val}.json`` and images in
    ``train/`` and ``val/``. ``size`` is ``(width, height)``. Output is
    byte-identical for identical arguments; train and val use separate
    random streams.
    """
    num_train = _check_int('num_train', num_train, 0)
    num_val = _check_int('num_val', num_val, 0)
    seed = _check_int('seed', seed, 0)
    if len(size) != 2:
        raise ValueError(f'size must be (width, height), got {size!r}')
    w = _check_int('width', size[0], 32)
    h = _check_int('height', size[1], 32)
    stats = dict(
        train=_write_split(out_dir, 'train', num_train, seed, (w, h)),
        val=_write_split(out_dir, 'val', num_val, seed, (w, h)))
    print_log(f'synthetic COCO written to {out_dir} ({w}x{h}, seed {seed}): '
              f'{stats}', logger=logger)
    return stats
