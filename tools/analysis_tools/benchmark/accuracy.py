"""Equal-budget accuracy: every model trained on the built-in dataset with the
Lite CPU config's data, optimizer and LR schedule for the same number of
iterations, then evaluated with CocoMetric, through tools/train.py and
tools/test.py (one process each, so that runs share no state)."""
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Optional, Tuple

from mmengine.config import Config

from .machine import ROOT, log
from .models import BOX_ONLY, LITE0_CONFIG, NO_BOXES, model_cfg

METRIC_KEYS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')
# accuracy-only variants: (model, mask_head settings merged into its
# config). 'embedmask_semantic' adds the AdelaiDet design's auxiliary
# semantic focal loss, which the CPU configs leave out; 'embedmask_boxonly'
# trains EmbedMask's box head alone (its masks are untrained), showing what
# the mask objectives cost the detections at the same budget
VARIANTS = {
    'embedmask_semantic': ('embedmask', dict(loss_semantic=dict(
        type='FusedFocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
        loss_weight=1.0))),
    'embedmask_boxonly': ('embedmask', dict(loss_mask=dict(loss_weight=0.),
                                            loss_semantic=None)),
}


def _set_scale(pipeline, scale) -> None:
    for step in pipeline:
        if step['type'] == 'Resize':
            step['scale'] = scale


def runner_cfg(name: str, iters: int, work_dir: str, data_root: str,
               pretrained: bool = True, tiny_size: Optional[Tuple] = None,
               seed: int = 0) -> Config:
    """The Lite CPU config with ``name``'s model on its backbone + neck, a
    schedule of ``iters`` iterations and no validation during training."""
    cfg = Config.fromfile(LITE0_CONFIG)
    base, mask_head = VARIANTS.get(name, (name, None))
    cfg.model = model_cfg(base, 'lite0', pretrained=pretrained)
    for key, value in (mask_head or {}).items():
        if isinstance(value, dict) and cfg.model.mask_head.get(key):
            cfg.model.mask_head[key].update(value)
        else:
            cfg.model.mask_head[key] = value
    cfg.work_dir = work_dir
    data_root = data_root.rstrip('/') + '/'
    for loader in (cfg.train_dataloader, cfg.test_dataloader):
        loader.dataset.data_root = data_root
        if tiny_size is not None:
            loader.num_workers = 0
            loader.persistent_workers = False
            _set_scale(loader.dataset.pipeline, tiny_size)
    if tiny_size is not None:
        cfg.train_dataloader.batch_size = 2
    cfg.test_evaluator.ann_file = osp.join(
        data_root, cfg.test_dataloader.dataset.ann_file)
    if name in NO_BOXES:
        cfg.test_evaluator.metric = ['segm']
    cfg.val_dataloader = None
    cfg.val_cfg = None
    cfg.val_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=iters)
    warmup = max(1, min(200, iters // 5))
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0,
             end=warmup),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=iters,
             milestones=[int(iters * 0.75), int(iters * 0.9)], gamma=0.1)
    ]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=iters, max_keep_ckpts=1)
    cfg.default_hooks.logger.interval = max(1, min(20, iters))
    cfg.randomness = dict(seed=seed)
    return cfg


def _run(cmd, log_path: str) -> float:
    start = time.perf_counter()
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        with open(log_path) as f:
            tail = f.read()[-3000:]
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}); '
                           f'log {log_path}:\n{tail}')
    return time.perf_counter() - start


def _iter_times(work_dir: str) -> dict:
    """Mean seconds per training iteration and the last logged loss, from
    the latest run's scalars.json (first logged interval excluded when
    possible)."""
    paths = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data',
                                      'scalars.json')))
    if not paths:
        return {}
    with open(paths[-1]) as f:  # this run's (timestamped) log
        records = [json.loads(line) for line in f if line.strip()]
    records = [r for r in records if 'time' in r and 'loss' in r]
    if not records:
        return {}
    timed = records[1:] if len(records) > 1 else records
    return dict(iter_s=sum(r['time'] for r in timed) / len(timed),
                final_loss=records[-1]['loss'])


def train_and_test(name: str, iters: int, work_root: str, data_root: str,
                   pretrained: bool = True, tiny_size=None,
                   env: Optional[dict] = None) -> dict:
    work_dir = osp.abspath(osp.join(work_root, f'acc_{name}'))
    os.makedirs(work_dir, exist_ok=True)
    cfg = runner_cfg(name, iters, work_dir, osp.abspath(data_root),
                     pretrained=pretrained, tiny_size=tiny_size)
    cfg_path = osp.join(work_dir, f'bench_{name}.py')
    cfg.dump(cfg_path)
    py = sys.executable
    train_s = _run([py, 'tools/train.py', cfg_path, '--work-dir', work_dir],
                   osp.join(work_dir, 'train.log'))
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    test_s = _run([py, 'tools/test.py', cfg_path, ckpt, '--work-dir',
                   work_dir], osp.join(work_dir, 'test.log'))
    with open(osp.join(work_dir, 'test_metrics.json')) as f:
        metrics = json.load(f)
    out = dict(iters=iters, train_wall_s=train_s, test_wall_s=test_s,
               work_dir=osp.relpath(work_dir, ROOT), **_iter_times(work_dir))
    # CocoMetric returns nothing when the model detected nothing: AP 0
    out['no_detections'] = not metrics
    for task in ('bbox', 'segm'):
        if not metrics:
            out[task] = None if task == 'bbox' and name in NO_BOXES else \
                {k: 0. for k in METRIC_KEYS}
            continue
        vals = {k: metrics.get(f'coco/{task}_{k}') for k in METRIC_KEYS}
        out[task] = None if vals['mAP'] is None else vals
    return out


def measure_accuracy(args, save, results) -> dict:
    """The equal-budget accuracy rows: each model trained and tested on the
    built-in data (``--tiny``: a tiny generated set)."""
    names = [m for m in args.acc_models if m not in BOX_ONLY]
    data_root = args.data_root
    tiny_size = None
    if args.tiny:
        from embedmask_mmdet.datasets import generate_synthetic_coco
        data_root = osp.join(args.work_dir, 'tiny_data')
        tiny_size = (args.tiny_size, args.tiny_size)
        generate_synthetic_coco(data_root, num_train=4, num_val=2, seed=0,
                                size=tiny_size)
    if not osp.isfile(osp.join(data_root, 'annotations/instances_val.json')):
        sys.exit(f'error: no dataset at {data_root}; run `make data` (or '
                 'tools/make_synthetic_coco.py) first')
    cfg = runner_cfg('embedmask', args.train_iters, args.work_dir,
                              data_root, tiny_size=tiny_size)
    counts = {}
    for split in ('train', 'val'):
        with open(osp.join(data_root, f'annotations/instances_{split}.json')) \
                as f:
            coco = json.load(f)
        counts[split] = (len(coco['images']), len(coco['annotations']),
                         len(coco['categories']))
    opt = cfg.optim_wrapper.optimizer
    sched = cfg.param_scheduler
    scale = [s['scale'] for s in cfg.train_dataloader.dataset.pipeline
             if s['type'] == 'Resize'][0]
    acc = dict(
        iters=args.train_iters, models={},
        data=f'`{data_root}`: {counts["train"][0]} train images '
        f'({counts["train"][1]} instances), {counts["val"][0]} val images '
        f'({counts["val"][1]} instances), {counts["val"][2]} classes',
        setup=f'batch {cfg.train_dataloader.batch_size}, images resized to '
        f'{scale[0]}x{scale[1]} (keep ratio) + random flip, '
        f'{opt.type} lr {opt.lr:g} weight decay {opt.get("weight_decay", 0):g}'
        f', grad clip {cfg.optim_wrapper.get("clip_grad", {}).get("max_norm")}'
        f', linear warm-up over {sched[0]["end"]} iterations then x0.1 at '
        f'iterations {sched[1]["milestones"]}, the same EfficientNet-Lite0 ('
        + ('random init' if args.tiny else
           'ImageNet weights from its pip package') +
        ') + FPN-96 (P3-P7) for every model (EmbedMask\'s FPN also makes P2 '
        'for its pixel branch and it trains in channels-last layout, as its '
        'config says), heads narrowed alike, seed 0')
    results['accuracy'] = acc
    for m in names:
        log(f'accuracy: training {m} for {args.train_iters} iterations')
        try:
            acc['models'][m] = train_and_test(
                m, args.train_iters, args.work_dir, data_root,
                pretrained=not args.tiny, tiny_size=tiny_size)
        except RuntimeError as e:  # keep the other rows; say what failed
            log(f'accuracy: {m} failed: {e}')
            acc['models'][m] = None
        log(f'  {m}: {acc["models"][m]}')
        save()
    return acc
