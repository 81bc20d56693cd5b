"""The custom-dataset template (configs/embedmask/
embedmask-lite0_fpn_1xb4-1300it_custom.py, docs/custom_dataset.md) trains
and evaluates on a 3-class COCO-format set made from the built-in generator."""
import json
import os.path as osp

import pytest
from mmengine.config import Config
from mmengine.runner import Runner

pytestmark = pytest.mark.slow  # make test-fast skips it

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TEMPLATE = osp.join(ROOT,
                    'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_custom.py')
CLASSES = ('cat', 'dog', 'bird')


def three_class_set(root: str) -> None:
    """The generator's 6 shape classes folded into 3 named ones."""
    from embedmask_mmdet.datasets import generate_synthetic_coco
    generate_synthetic_coco(root, num_train=8, num_val=4, seed=5,
                            size=(160, 160))
    for split in ('train', 'val'):
        path = osp.join(root, 'annotations', f'instances_{split}.json')
        with open(path) as f:
            coco = json.load(f)
        for ann in coco['annotations']:
            ann['category_id'] = (ann['category_id'] - 1) % 3 + 1
        coco['categories'] = [dict(id=i + 1, name=n)
                              for i, n in enumerate(CLASSES)]
        with open(path, 'w') as f:
            json.dump(coco, f)


def test_template_trains_on_a_three_class_dataset(tmp_path):
    data_root = str(tmp_path / 'my_dataset') + '/'
    three_class_set(data_root)
    cfg = Config.fromfile(TEMPLATE)
    # what a user edits: the data root (classes already match)
    cfg.merge_from_dict(dict(
        train_dataloader=dict(dataset=dict(data_root=data_root),
                              num_workers=0, persistent_workers=False,
                              batch_size=2),
        val_dataloader=dict(dataset=dict(data_root=data_root),
                            num_workers=0, persistent_workers=False),
        test_dataloader=dict(dataset=dict(data_root=data_root),
                             num_workers=0, persistent_workers=False),
        val_evaluator=dict(
            ann_file=data_root + 'annotations/instances_val.json'),
        test_evaluator=dict(
            ann_file=data_root + 'annotations/instances_val.json')))
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=4,
                         val_interval=4)
    cfg.param_scheduler = []
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', interval=4)
    cfg.model.test_cfg.score_thr = 0.
    cfg.work_dir = str(tmp_path / 'work')
    assert cfg.model.bbox_head.num_classes == 3
    assert cfg.model.mask_head.num_classes == 3
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.train_dataloader.dataset.metainfo['classes'] == CLASSES
    metrics = runner.test()
    assert {'coco/bbox_mAP', 'coco/segm_mAP'} <= set(metrics)
    assert runner.model.bbox_head.conv_cls.out_channels == 3
