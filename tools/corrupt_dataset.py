"""Copy a COCO-format dataset with some training images and polygons broken.

    python tools/corrupt_dataset.py --src data/synthetic --out DIR \
        [--image-fraction 0.05] [--polygon-fraction 0.05] [--seed 0]

Expects ``SRC/annotations/instances_{train,val}.json`` and images in
``SRC/train`` and ``SRC/val`` (the built-in layout). In the copy, a fraction
of the train images are truncated to 30-70 % of their bytes, and a fraction
of the train polygon annotations are made degenerate: alternately fewer than
3 points, and all points on one line (zero area). The val split is copied
unchanged. ``DIR/corruption.json`` lists what was broken. Train on it with
``--cfg-options train_dataloader.dataset.data_root=DIR/`` (and the same for
the val loader and evaluator) to see the skips counted in the log.
"""
import argparse
import json
import os.path as osp
import shutil
import sys

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--src', required=True, help='dataset to copy')
    parser.add_argument('--out', required=True, help='where to write the copy')
    parser.add_argument('--image-fraction', type=float, default=0.05)
    parser.add_argument('--polygon-fraction', type=float, default=0.05)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='replace OUT if it exists')
    args = parser.parse_args(argv)
    for name in ('image_fraction', 'polygon_fraction'):
        if not 0 <= getattr(args, name) <= 1:
            parser.error(f'--{name.replace("_", "-")} must be in [0, 1]')
    return args


def degenerate(poly, kind):
    """A polygon with < 3 points, or with every point on one line."""
    if kind == 'polygon < 3 points':
        return poly[:4]
    xs = np.asarray(poly[0::2], float)
    y = float(np.mean(poly[1::2]))
    return [v for x in xs for v in (round(float(x), 2), round(y, 2))]


def corrupt(src, out, image_fraction, polygon_fraction, seed,
            overwrite=False):
    ann_file = osp.join(src, 'annotations', 'instances_train.json')
    if not osp.isfile(ann_file):
        sys.exit(f'error: {ann_file} not found (expected the layout of '
                 'tools/make_synthetic_coco.py)')
    if osp.exists(out):
        if not overwrite:
            sys.exit(f'error: {out} exists; pass --overwrite to replace it')
        shutil.rmtree(out)
    shutil.copytree(src, out)
    rng = np.random.default_rng(seed)
    with open(ann_file) as f:
        coco = json.load(f)

    images = sorted(coco['images'], key=lambda i: i['id'])
    n_img = int(round(image_fraction * len(images)))
    broken_images = []
    for idx in sorted(rng.choice(len(images), n_img, replace=False)):
        path = osp.join(out, 'train', images[idx]['file_name'])
        with open(path, 'rb') as f:
            data = f.read()
        with open(path, 'wb') as f:
            f.write(data[:int(len(data) * rng.uniform(0.3, 0.7))])
        broken_images.append(images[idx]['file_name'])

    polys = [a for a in coco['annotations']
             if isinstance(a['segmentation'], list)]
    n_poly = int(round(polygon_fraction * len(polys)))
    broken_anns = {'polygon < 3 points': [], 'zero area': []}
    chosen = sorted(rng.choice(len(polys), n_poly, replace=False))
    for k, idx in enumerate(chosen):
        ann = polys[idx]
        kind = list(broken_anns)[k % 2]
        ann['segmentation'] = [degenerate(p, kind)
                               for p in ann['segmentation']]
        broken_anns[kind].append(ann['id'])
    with open(osp.join(out, 'annotations', 'instances_train.json'), 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
    report = dict(src=src, seed=seed, truncated_images=broken_images,
                  degenerate_annotations=broken_anns,
                  num_train_images=len(images), num_polygons=len(polys))
    with open(osp.join(out, 'corruption.json'), 'w') as f:
        json.dump(report, f, indent=1)
    return report


def main(argv=None):
    args = parse_args(argv)
    report = corrupt(args.src, args.out, args.image_fraction,
                     args.polygon_fraction, args.seed, args.overwrite)
    print(f'{args.out}: truncated {len(report["truncated_images"])} of '
          f'{report["num_train_images"]} train images; made degenerate ' +
          ', '.join(f'{len(v)} ({k})' for k, v in
                    report['degenerate_annotations'].items()) +
          f' of {report["num_polygons"]} train polygon annotations; see '
          f'{osp.join(args.out, "corruption.json")}')


if __name__ == '__main__':
    main()
