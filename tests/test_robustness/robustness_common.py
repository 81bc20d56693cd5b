"""Shared helpers and constants of the robustness tests (their fixtures are
in this folder's conftest.py)."""
import json
import os.path as osp

import pytest

import embedmask_mmdet  # noqa: F401
from embedmask_mmdet.datasets import SYNTHETIC_CLASSES, RobustCocoDataset

pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword")


ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CPU_CONFIG = osp.join(ROOT, 'configs', 'embedmask',
                      'embedmask_r18_fpn_1xb4-3k_synthetic.py')
HELPERS = osp.join(ROOT, 'tests', 'test_robustness', 'robustness_helpers.py')
SIZE = 96
CAP = 24  # max_masks_to_train of the tiny model


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
