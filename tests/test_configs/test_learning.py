"""The CPU config learns: a short training on a few built-in images, through
mmengine's Runner and mmdet's CocoMetric, segments those images (segm AP > 0.5)."""
import json
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

from embedmask_mmdet.datasets import generate_synthetic_coco

pytestmark = pytest.mark.slow  # make test-fast skips it

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CPU_CONFIG = osp.join(ROOT, 'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')
SIZE = 160


def few_image_split(data_root: str, num_images: int = 4) -> str:
    """Writes annotations/few.json: the first train images with 1-4 objects."""
    with open(osp.join(data_root, 'annotations/instances_train.json')) as f:
        coco = json.load(f)
    counts = {}
    for ann in coco['annotations']:
        counts[ann['image_id']] = counts.get(ann['image_id'], 0) + 1
    keep = [img for img in coco['images'] if 1 <= counts.get(img['id'], 0) <= 4]
    keep = keep[:num_images]
    assert len(keep) == num_images
    ids = {img['id'] for img in keep}
    coco['images'] = keep
    coco['annotations'] = [a for a in coco['annotations'] if a['image_id'] in ids]
    path = osp.join(data_root, 'annotations/few.json')
    with open(path, 'w') as f:
        json.dump(coco, f)
    return path


def set_scale(pipeline, scale):
    for step in pipeline:
        if step['type'] == 'Resize':
            step['scale'] = scale


def small_run_cfg(data_root: str, ann_file: str, work_dir: str,
                  max_iters: int) -> Config:
    cfg = Config.fromfile(CPU_CONFIG)
    cfg.work_dir = work_dir
    for loader in (cfg.train_dataloader, cfg.val_dataloader, cfg.test_dataloader):
        loader.num_workers = 0
        loader.persistent_workers = False
        loader.dataset.data_root = data_root
        loader.dataset.ann_file = ann_file
        loader.dataset.data_prefix = dict(img='train/')
        set_scale(loader.dataset.pipeline, (SIZE, SIZE))
    cfg.val_evaluator.ann_file = ann_file
    cfg.test_evaluator = cfg.val_evaluator
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters,
                         val_interval=max_iters)
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.05, by_epoch=False, begin=0,
             end=30),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=max_iters,
             milestones=[int(max_iters * 0.8)], gamma=0.1)
    ]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=max_iters)
    cfg.default_hooks.logger.interval = 50
    cfg.randomness = dict(seed=0)
    return cfg


def test_cpu_config_learns_few_images(tmp_path):
    data_root = str(tmp_path / 'data') + '/'
    generate_synthetic_coco(data_root, num_train=24, num_val=1, seed=3,
                            size=(SIZE, SIZE))
    ann_file = few_image_split(data_root)
    cfg = small_run_cfg(data_root, ann_file, str(tmp_path / 'work'),
                        max_iters=300)
    runner = Runner.from_cfg(cfg)
    runner.train()
    metrics = runner.test()
    print({k: round(v, 3) for k, v in metrics.items() if k.endswith('mAP')})
    assert metrics['coco/bbox_mAP'] > 0.5
    assert metrics['coco/segm_mAP'] > 0.5
