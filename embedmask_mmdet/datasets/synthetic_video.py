"""Synthetic videos of the built-in shapes with known instance IDs.

The objects look as in the built-in dataset (:mod:`.synthetic_coco`: its
shapes, its painting and its cluttered backgrounds, at its 320 x 320 size),
so a model trained there detects them. Each object is drawn once, into a
template (its mask and its painted pixels), and moved by whole pixels over a
static background with fresh pixel noise per frame: the ground-truth masks
are exact translations of the template, cut by the objects above it and by
the image border.

Motion: ``crossings`` pairs meet head-on (one passes in front of the other
at the middle of the video, where a tracker that only looks at box overlap
tends to swap them), the other objects move in straight lines and bounce off
the image border. Depth is fixed per object, so crossings are occlusions.

An object is in a frame's ground truth when at least
``max(20, 0.25 x its area)`` of its pixels are visible, the rule of the
still dataset.
"""
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import cv2
import numpy as np

from .synthetic_coco import (_CLASS_MIN_SIDE, _MIN_SIDE, _MIN_VISIBLE_AREA,
                             _MIN_VISIBLE_RATIO, SYNTHETIC_CLASSES, _background,
                             _box, _paint, _shape_geometry)

__all__ = ['SyntheticVideo', 'make_synthetic_video', 'write_video']

# sides of the moving objects: well inside the still dataset's range, large
# enough for the demo model to find them in most frames
_SIDE_RANGE = (28., 64.)
_SPEED_RANGE = (2., 4.)  # pixels per frame


@dataclass
class SyntheticVideo:
    """Frames and ground truth of one synthetic video.

    Attributes:
        frames (list[np.ndarray]): (H, W, 3) uint8 BGR frames.
        gt (list[list[dict]]): Per frame, the visible objects: ``id``
            (0-based, one per object for the whole video), ``label`` (index
            into ``SYNTHETIC_CLASSES``), ``bbox`` [x, y, w, h] of the
            visible pixels, ``area`` (visible pixels) and, when made with
            ``with_masks=True``, ``mask`` (H, W) bool.
        labels (list[int]): The class of each object id.
        crossing_pairs (list[tuple[int, int]]): The ids of the pairs made
            to meet head-on.
    """
    frames: List[np.ndarray]
    gt: List[List[dict]]
    labels: List[int]
    crossing_pairs: List[Tuple[int, int]] = field(default_factory=list)

    @property
    def num_objects(self) -> int:
        return len(self.labels)


def _template(name: str, side: float, bg: np.ndarray, start: Tuple[int, int],
              rng: np.random.Generator):
    """One object's (mask, painted pixels, (top-left offset)) in a square
    canvas around its centre, coloured against the background where the
    object starts."""
    size = int(np.ceil(side * 1.4)) + 4
    half = size / 2.0
    _, mask = _shape_geometry(name, half, half, side, rng, size, size)
    # the background under the canvas at the start position (edge-padded so
    # that a canvas hanging over the border still has pixels)
    pad = size
    padded = cv2.copyMakeBorder(bg, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    x0 = int(round(start[0] - half)) + pad
    y0 = int(round(start[1] - half)) + pad
    canvas = padded[y0:y0 + size, x0:x0 + size].copy()
    _paint(canvas, canvas.copy(), mask, _box(mask), rng)
    return mask, canvas, half


def _trajectories(rng, num_objects, crossings, num_frames, w, h, sides):
    """Centres (num_objects, num_frames, 2) float: ``crossings`` head-on
    pairs first, then straight lines bouncing off the border."""
    centres = np.zeros((num_objects, num_frames, 2))
    t = np.arange(num_frames)[:, None]
    meet = (num_frames - 1) / 2.0
    pairs = []
    for k in range(crossings):
        a, b = 2 * k, 2 * k + 1
        margin = max(sides[a], sides[b]) * 0.6
        # the travel of each object must fit inside the frame
        speed = rng.uniform(*_SPEED_RANGE)
        reach = speed * meet
        limit = min(w, h) / 2.0 - margin
        if reach > limit:
            speed, reach = limit / meet, limit
        angle = rng.uniform(0, np.pi)
        direction = np.array([np.cos(angle), np.sin(angle)])
        lo = np.array([margin, margin]) + reach * np.abs(direction)
        hi = np.array([w - margin, h - margin]) - reach * np.abs(direction)
        point = rng.uniform(lo, np.maximum(hi, lo))
        centres[a] = point + (t - meet) * speed * direction
        centres[b] = point - (t - meet) * speed * direction
        pairs.append((a, b))
    for i in range(2 * crossings, num_objects):
        margin = sides[i] * 0.5
        pos = rng.uniform([margin, margin], [w - margin, h - margin])
        angle = rng.uniform(0, 2 * np.pi)
        vel = rng.uniform(*_SPEED_RANGE) * np.array([np.cos(angle),
                                                     np.sin(angle)])
        for f in range(num_frames):
            centres[i, f] = pos
            pos = pos + vel
            for d, extent in enumerate((w, h)):
                if not margin <= pos[d] <= extent - margin:
                    vel[d] = -vel[d]
                    pos[d] = np.clip(pos[d], margin, extent - margin)
    return centres, pairs


def make_synthetic_video(seed: int = 0, num_frames: int = 48,
                         num_objects: int = 6, crossings: int = 2,
                         size: Tuple[int, int] = (320, 320),
                         with_masks: bool = False) -> SyntheticVideo:
    """A deterministic synthetic video with known instance IDs.

    Args:
        seed (int): Seed of everything random (same seed, same video).
        num_frames (int): Frames, >= 2.
        num_objects (int): Moving objects, >= 2 x ``crossings``.
        crossings (int): Pairs meeting head-on at the middle frame.
        size (tuple[int, int]): (width, height), >= 64 each.
        with_masks (bool): Keep each object's visible mask in the ground
            truth.

    Returns:
        SyntheticVideo
    """
    if num_frames < 2:
        raise ValueError(f'num_frames must be >= 2, got {num_frames}')
    if crossings < 0 or num_objects < 2 * crossings:
        raise ValueError(f'num_objects ({num_objects}) must be >= 2 x '
                         f'crossings ({crossings}), crossings >= 0')
    w, h = size
    if w < 64 or h < 64:
        raise ValueError(f'size must be >= 64 x 64, got {size!r}')
    rng = np.random.default_rng([seed, 7])
    bg = _background(rng, h, w)
    labels = [int(rng.integers(len(SYNTHETIC_CLASSES)))
              for _ in range(num_objects)]
    sides = [max(float(rng.uniform(*_SIDE_RANGE)),
                 _CLASS_MIN_SIDE.get(SYNTHETIC_CLASSES[c], _MIN_SIDE))
             for c in labels]
    centres, pairs = _trajectories(rng, num_objects, crossings, num_frames, w,
                                   h, sides)
    templates = [_template(SYNTHETIC_CLASSES[c], s, bg, centres[i, 0], rng)
                 for i, (c, s) in enumerate(zip(labels, sides))]
    areas = [int(m.sum()) for m, _, _ in templates]
    # depth: a random order, the last drawn on top
    order = [int(i) for i in rng.permutation(num_objects)]
    frames, gt = [], []
    for f in range(num_frames):
        img = bg.copy()
        owner = np.full((h, w), -1, np.int32)
        for i in order:
            mask, pixels, half = templates[i]
            size_t = mask.shape[0]
            x0 = int(round(centres[i, f, 0] - half))
            y0 = int(round(centres[i, f, 1] - half))
            # the part of the canvas inside the image
            cx0, cy0 = max(0, -x0), max(0, -y0)
            cx1, cy1 = min(size_t, w - x0), min(size_t, h - y0)
            if cx0 >= cx1 or cy0 >= cy1:
                continue
            sub = mask[cy0:cy1, cx0:cx1]
            region = (slice(y0 + cy0, y0 + cy1), slice(x0 + cx0, x0 + cx1))
            img[region][sub] = pixels[cy0:cy1, cx0:cx1][sub]
            owner[region][sub] = i
        img += rng.integers(-3, 4, img.shape, dtype=np.int16)
        frames.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
        objects = []
        for i in range(num_objects):
            visible = owner == i
            area = int(visible.sum())
            if area < max(_MIN_VISIBLE_AREA, _MIN_VISIBLE_RATIO * areas[i]):
                continue
            y0, y1, x0, x1 = _box(visible)
            obj = dict(id=i, label=labels[i],
                       bbox=[float(x0), float(y0), float(x1 - x0),
                             float(y1 - y0)], area=area)
            if with_masks:
                obj['mask'] = visible
            objects.append(obj)
        gt.append(objects)
    return SyntheticVideo(frames, gt, labels, pairs)


def write_video(path: str, frames: List[np.ndarray],
                fps: float = 10.) -> str:
    """Write BGR ``frames`` to ``path`` (mp4v; OpenCV's encoder, so a
    ``.mp4`` or ``.avi`` name); returns ``path``.

    Raises:
        OSError: OpenCV cannot write there.
    """
    folder = osp.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*'mp4v'), fps,
                             (w, h))
    if not writer.isOpened():
        raise OSError(f'cannot write a video to {path!r} (OpenCV mp4v: use '
                      'a .mp4 name in a writable folder)')
    for frame in frames:
        writer.write(np.ascontiguousarray(frame))
    writer.release()
    return path
