"""Shared fixtures and helpers of the robustness tests."""
import json
import logging
import os.path as osp

import pytest
import torch
from mmdet.utils import register_all_modules
from mmengine.logging import MMLogger
from mmengine.registry import DefaultScope

import embedmask_mmdet  # noqa: F401
from embedmask_mmdet.datasets import (SYNTHETIC_CLASSES, RobustCocoDataset,
                                      generate_synthetic_coco)

torch.set_num_threads(1)
register_all_modules(init_default_scope=True)
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")


ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CPU_CONFIG = osp.join(ROOT, 'configs', 'embedmask',
                      'embedmask_r18_fpn_1xb4-3k_synthetic.py')
HELPERS = osp.join(ROOT, 'tests', 'robustness_helpers.py')
SIZE = 96
CAP = 24  # max_masks_to_train of the tiny model


@pytest.fixture(scope='module', autouse=True)
def module_scope():
    """Leaves the default scope as it was for the next test modules."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(autouse=True)
def mmdet_scope():
    """The toy Runners switch the default scope to mmengine; the datasets
    and pipelines here are built in mmdet's, as the configs do."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(scope='module')
def synth(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('synth'))
    generate_synthetic_coco(root, num_train=6, num_val=3, seed=0,
                            size=(SIZE, SIZE))
    return root


@pytest.fixture
def logs(monkeypatch):
    """Warnings and errors logged by any mmengine logger (a Runner makes its
    own current logger)."""
    records = []
    handle = MMLogger.handle

    def record(self, rec):
        if rec.levelno >= logging.WARNING:
            records.append(rec.getMessage())
        return handle(self, rec)

    monkeypatch.setattr(MMLogger, 'handle', record)
    return records


def load_json(root, split='train'):
    with open(osp.join(root, 'annotations', f'instances_{split}.json')) as f:
        return json.load(f)


def write_json(coco, path):
    with open(path, 'w') as f:
        json.dump(coco, f)
    return str(path)


def dataset(root, ann_file, split='train', pipeline=(), **kwargs):
    kwargs.setdefault('filter_cfg', None)
    return RobustCocoDataset(
        data_root=root, ann_file=ann_file, data_prefix=dict(img=f'{split}/'),
        metainfo=dict(classes=SYNTHETIC_CLASSES), pipeline=list(pipeline),
        **kwargs)


def infos(ds):
    return [ds.get_data_info(i) for i in range(len(ds))]


def first_polygon_ann(coco):
    return next(a for a in coco['annotations']
                if isinstance(a['segmentation'], list))
