"""Seeded real-data check: train a CPU config briefly on the real-image set
(tools/make_real_coco.py) once per seed, test on its held-out split, and
print segm/bbox AP per seed with their mean and spread.

Any checkout can be measured with this one script, so two commits are
compared with the same data, seeds and budget:

    python tools/make_real_coco.py --out data/real
    python tools/real_data_check.py --seeds 0 1 2 3 4
    git worktree add ../old 551fbfa
    python tools/real_data_check.py --checkout ../old \
        --config configs/embedmask/embedmask_r18_fpn_synthetic-cpu.py

Each run: the config with the real set's two classes, ``--iters``
iterations (the config's own optimiser and LR schedule, the schedule's
milestones left as the config sets them), ``randomness.seed`` = the seed,
no validation during training; then the checkout's tools/test.py on the
last checkpoint. The checkout's own ``embedmask_mmdet`` is imported
(PYTHONPATH), whatever is installed.
"""
import argparse
import json
import os
import os.path as osp
import re
import statistics
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEFAULT_CONFIG = 'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py'
CHILD = """\
_base_ = {base!r}
classes = ('building', 'nucleus')
metainfo = dict(classes=classes, palette=[(220, 20, 60), (0, 130, 200)])
data_root = {data_root!r}
model = dict(bbox_head=dict(num_classes=2), mask_head=dict(num_classes=2))
randomness = dict(seed={seed})
train_cfg = dict(max_iters={iters}, val_interval={iters} + 1)
default_hooks = dict(checkpoint=dict(interval={iters}, max_keep_ckpts=1))
train_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo,
    ann_file='annotations/instances_train.json', data_prefix=dict(img='train/')))
val_dataloader = dict(dataset=dict(
    data_root=data_root, metainfo=metainfo,
    ann_file='annotations/instances_val.json', data_prefix=dict(img='val/')))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
"""
# the dataset base's pipelines with another Resize scale (the same text for
# every checkout, so both ends of a comparison see the same images)
PIPELINES = """\
img_scale = {scale!r}
train_pipeline = [
    dict(type='RobustLoadImageFromFile', on_corrupt='skip', backend_args=None),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')]
test_pipeline = [
    dict(type='LoadImageFromFile', backend_args=None),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape',
                                          'img_shape', 'scale_factor'))]
train_dataloader['dataset']['pipeline'] = train_pipeline
val_dataloader['dataset']['pipeline'] = test_pipeline
"""
METRIC = re.compile(r'coco/(segm|bbox)_mAP: (-?[0-9.]+)')
EMPTY = 'The testing results of the whole dataset is empty'


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkout', default=ROOT,
                        help='repository checkout whose code and config run '
                        '(default: this one)')
    parser.add_argument('--config', default=DEFAULT_CONFIG,
                        help='config path inside the checkout')
    parser.add_argument('--data-root', default='data/real',
                        help='output of tools/make_real_coco.py')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    parser.add_argument('--iters', type=int, default=300)
    parser.add_argument('--img-scale', type=int, default=None,
                        help='train and test at this square Resize scale '
                        '(keep_ratio) instead of the config\'s')
    parser.add_argument('--work-dir', default='work_dirs/real_data')
    parser.add_argument('--out', default=None,
                        help='json file for the per-seed figures')
    return parser.parse_args(argv)


def _run(cmd, env, log_path):
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode:
        sys.exit(f'{" ".join(cmd)} failed ({proc.returncode}); see '
                 f'{log_path}')
    with open(log_path) as f:
        return f.read()


def run_seed(args, checkout, data_root, seed):
    work = osp.abspath(osp.join(args.work_dir, f'seed{seed}'))
    os.makedirs(work, exist_ok=True)
    cfg = osp.join(work, 'real_data_config.py')
    with open(cfg, 'w') as f:
        f.write(CHILD.format(base=osp.join(checkout, args.config),
                             data_root=data_root.rstrip('/') + '/',
                             seed=seed, iters=args.iters))
        if args.img_scale:
            f.write(PIPELINES.format(scale=(args.img_scale, args.img_scale)))
    env = dict(os.environ, PYTHONPATH=checkout + os.pathsep
               + os.environ.get('PYTHONPATH', ''))
    py = sys.executable
    start = time.perf_counter()
    _run([py, osp.join(checkout, 'tools/train.py'), cfg, '--work-dir', work],
         env, osp.join(work, 'train.log'))
    train_s = time.perf_counter() - start
    with open(osp.join(work, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    text = _run([py, osp.join(checkout, 'tools/test.py'), cfg, ckpt,
                 '--work-dir', work], env, osp.join(work, 'test.log'))
    found = dict(METRIC.findall(text))
    if 'segm' not in found:
        if EMPTY not in text:
            sys.exit(f'no coco/segm_mAP in {work}/test.log')
        # mmdet's CocoMetric returns no AP when nothing was detected
        found = {'segm': 0., 'bbox': 0.}
    return {'seed': seed, 'segm_mAP': float(found['segm']),
            'bbox_mAP': float(found['bbox']), 'train_s': round(train_s, 1)}


def main(argv=None):
    args = parse_args(argv)
    checkout = osp.abspath(args.checkout)
    data_root = osp.abspath(args.data_root)
    ann = osp.join(data_root, 'annotations/instances_val.json')
    if not osp.isfile(ann):
        sys.exit(f'{ann} not found: run python tools/make_real_coco.py '
                 f'--out {args.data_root}')
    if not osp.isfile(osp.join(checkout, args.config)):
        sys.exit(f'{args.config} not found in {checkout}: give --config as '
                 'that checkout names it')
    head = subprocess.run(['git', '-C', checkout, 'rev-parse', '--short',
                           'HEAD'], capture_output=True, text=True).stdout
    rows = []
    for seed in args.seeds:
        rows.append(run_seed(args, checkout, data_root, seed))
        r = rows[-1]
        print(f'seed {seed}: segm AP {r["segm_mAP"]:.3f}  bbox AP '
              f'{r["bbox_mAP"]:.3f}  ({r["train_s"]:.0f} s training)',
              flush=True)
    segm = [r['segm_mAP'] for r in rows]
    spread = statistics.stdev(segm) if len(segm) > 1 else 0.
    scale = f', {args.img_scale} px' if args.img_scale else ''
    print(f'commit {head.strip() or "?"} {args.config}, {args.iters} '
          f'iterations{scale}: segm AP mean {statistics.mean(segm):.3f} '
          f'(sd {spread:.3f}, n={len(segm)}); bbox AP mean '
          f'{statistics.mean(r["bbox_mAP"] for r in rows):.3f}')
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'commit': head.strip(), 'config': args.config,
                       'iters': args.iters,
                       'img_scale': args.img_scale, 'runs': rows}, f, indent=1)


if __name__ == '__main__':
    main()
