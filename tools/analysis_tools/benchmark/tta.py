"""Test-time augmentation on the built-in val split: the demo checkpoint
tested as its config says, at the TTA's largest scale alone, and with the
config's EmbedMaskTTAModel views (tools/test.py and tools/test.py --tta,
in this process)."""
import copy
import os.path as osp
import time

from mmengine.config import Config
from mmengine.runner import Runner

from embedmask_mmdet.utils.tta import use_tta

from .deploy import demo_checkpoint
from .machine import ROOT, log, machine_info, repo_path
from .models import LITE0_CONFIG

KEYS = ('bbox_mAP', 'segm_mAP', 'segm_mAP_50', 'segm_mAP_75', 'segm_mAP_s',
        'segm_mAP_m', 'segm_mAP_l')


def _test(cfg: Config, work_dir: str) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg.work_dir = work_dir
    cfg.test_dataloader.num_workers = 0
    cfg.test_dataloader.persistent_workers = False
    cfg.log_level = 'WARNING'
    runner = Runner.from_cfg(cfg)
    start = time.perf_counter()
    metrics = runner.test()
    seconds = time.perf_counter() - start
    images = len(runner.test_dataloader.dataset)
    # CocoMetric returns nothing when nothing was detected: AP 0
    return dict({k: float(metrics.get(f'coco/{k}', 0.)) for k in KEYS},
                s_per_img=seconds / images, images=images,
                no_detections=not metrics)


def _at_scale(cfg: Config, scale) -> Config:
    cfg = copy.deepcopy(cfg)
    for step in cfg.test_dataloader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = tuple(scale)
    return cfg


def run(data_root: str, checkpoint: str, work_dir: str,
        config: str = LITE0_CONFIG, test_cfg: dict = None) -> dict:
    """Rows 'plain' (the config's test scale), 'plain at <largest TTA
    scale>' and 'tta' (the config's tta_model / tta_pipeline): COCO AP and
    seconds per image of the whole test loop (loading included).
    ``test_cfg`` overrides the model's (the tiny run's score_thr 0)."""
    cfg = Config.fromfile(config)
    if test_cfg:
        cfg.model.test_cfg.update(test_cfg)
    cfg.load_from = checkpoint
    data_root = data_root.rstrip('/') + '/'
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.test_evaluator.ann_file = osp.join(
        data_root, cfg.test_dataloader.dataset.ann_file)
    scales = [tuple(s) for s in cfg.tta_scales]
    flips = len(cfg.tta_pipeline[-1]['transforms'][1])
    test_scale = [tuple(s['scale']) for s in cfg.test_dataloader.dataset.pipeline
                  if s['type'] == 'Resize'][0]
    largest = max(scales, key=lambda s: s[0] * s[1])
    rows = {}
    rows['plain'] = _test(cfg, osp.join(work_dir, 'plain'))
    rows['plain_largest'] = _test(_at_scale(cfg, largest),
                                  osp.join(work_dir, 'plain_largest'))
    rows['tta'] = _test(use_tta(copy.deepcopy(cfg)), osp.join(work_dir,
                                                             'tta'))
    return dict(config=repo_path(config),
        checkpoint=repo_path(checkpoint), test_scale=list(test_scale),
        tta_scales=[list(s) for s in scales], flips=flips,
        views=len(scales) * flips, largest=list(largest), rows=rows,
        merge=cfg.tta_model['type'])


def measure_tta(args, results: dict):
    """EmbedMask-Lite with and without test-time augmentation on the
    built-in val split (the demo checkpoint; --tiny: the tiny accuracy
    run's EmbedMask on its tiny data)."""
    if args.tiny:
        acc = (results.get('accuracy') or {}).get('models', {})
        if not acc.get('embedmask'):
            log('tta: no tiny EmbedMask run to test')
            return None
        work = osp.join(ROOT, acc['embedmask']['work_dir'])
        with open(osp.join(work, 'last_checkpoint')) as f:
            ckpt = f.read().strip()
        config = osp.join(work, 'bench_embedmask.py')
        data_root = osp.join(args.work_dir, 'tiny_data')
    else:
        ckpt, config, data_root = demo_checkpoint(args.deploy_checkpoint), \
            None, args.data_root
        if ckpt is None:
            log('tta: no demo checkpoint (run `make demo` or pass '
                '--deploy-checkpoint): no TTA rows')
            return None
    log(f'tta: testing {ckpt} without and with test-time augmentation')
    start = time.perf_counter()
    # the tiny run's barely trained model scores under the threshold
    section = run(data_root, ckpt, osp.join(args.work_dir, 'tta'),
                  **(dict(config=config, test_cfg=dict(score_thr=0.))
                     if config else {}))
    section['machine'] = dict(machine_info(['cpu']), **{
        'section wall time':
        f'{(time.perf_counter() - start) / 60:.1f} min'})
    rows = section['rows']
    log('  segm mAP ' + ', '.join(f'{k} {v["segm_mAP"]:.3f}'
                                  for k, v in rows.items()))
    return section
