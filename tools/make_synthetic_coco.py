"""Generate the built-in synthetic COCO-format instance-segmentation set.

Example:
    python tools/make_synthetic_coco.py --out data/synthetic \
        --num-train 400 --num-val 100 --seed 0 --size 320x320
"""
import argparse
import os.path as osp
import sys
import time

try:
    from embedmask_mmdet.datasets import generate_synthetic_coco
except ImportError:  # running from a checkout without an install
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))
    from embedmask_mmdet.datasets import generate_synthetic_coco


def _size(text: str):
    parts = text.lower().split('x')
    try:
        w, h = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f'expected WIDTHxHEIGHT such as 320x320, got {text!r}')
    if w < 32 or h < 32:
        raise argparse.ArgumentTypeError(
            f'width and height must be >= 32, got {text!r}')
    return w, h


def _count(text: str):
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}')
    if n < 0:
        raise argparse.ArgumentTypeError(f'must be >= 0, got {n}')
    return n


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='data/synthetic',
                        help='output directory (default: data/synthetic)')
    parser.add_argument('--num-train', type=_count, default=400)
    parser.add_argument('--num-val', type=_count, default=100)
    parser.add_argument('--seed', type=_count, default=0)
    parser.add_argument('--size', type=_size, default=(320, 320),
                        help='image size as WIDTHxHEIGHT (default: 320x320)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    stats = generate_synthetic_coco(args.out, args.num_train, args.num_val,
                                    seed=args.seed, size=args.size)
    for split, s in stats.items():
        print(f'{split}: {s["images"]} images, {s["instances"]} instances, '
              f'{s["empty_images"]} empty, {s["dropped_occluded"]} dropped '
              'by occlusion')
    print(f'done in {time.perf_counter() - start:.1f}s -> {args.out}')


if __name__ == '__main__':
    main()
