"""The EmbedMask-Lite CPU config (packaged ImageNet EfficientNet-Lite0) builds,
loads its backbone weights offline, and runs a loss and a predict step through
the real data pipeline and DetDataPreprocessor."""
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger

from embedmask_mmdet.datasets import generate_synthetic_coco

pytestmark = pytest.mark.slow  # make test-fast skips it

MMLogger.get_current_instance().setLevel('WARNING')

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
LITE = osp.join(ROOT, 'configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py')


@pytest.fixture(scope='module')
def lite():
    cfg = Config.fromfile(LITE)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return cfg, model


def load_batch(cfg, tmp_path, test_mode):
    root = str(tmp_path) + '/'
    generate_synthetic_coco(root, num_train=6, num_val=2, seed=5, size=(128, 96))
    loader = cfg.val_dataloader if test_mode else cfg.train_dataloader
    ds_cfg = loader.dataset.copy()
    ds_cfg.update(data_root=root, ann_file='annotations/instances_train.json',
                  data_prefix=dict(img='train/'), test_mode=test_mode)
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(ds_cfg)
    return pseudo_collate([dataset[0], dataset[1]])


def test_lite_backbone_is_pretrained(lite):
    from embedmask_mmdet.models.backbones import EfficientNetLite
    cfg, model = lite
    assert isinstance(model.backbone, EfficientNetLite)
    assert cfg.model.backbone.init_cfg.checkpoint == 'packaged://efficientnet-lite0'
    # packaged weights are not the default init: BN running stats were loaded
    assert not torch.allclose(model.backbone._bn0.running_var,
                              torch.ones_like(model.backbone._bn0.running_var))
    assert cfg.model.data_preprocessor.mean == [127.0, 127.0, 127.0]
    assert cfg.model.data_preprocessor.bgr_to_rgb


def test_lite_loss_and_predict_step(lite, tmp_path):
    cfg, model = lite
    model.train()
    data = model.data_preprocessor(load_batch(cfg, tmp_path, False), True)
    losses = model(**data, mode='loss')
    # the CPU configs leave the auxiliary semantic loss out
    assert set(losses) == {'loss_cls', 'loss_bbox', 'loss_centerness',
                           'loss_mask'}
    total = sum(v for k, v in losses.items() if k.startswith('loss'))
    assert torch.isfinite(total)
    total.backward()
    model.eval()
    with torch.no_grad():
        data = model.data_preprocessor(load_batch(cfg, tmp_path / 't', True),
                                       False)
        results = model(**data, mode='predict')
    assert len(results) == 2
    for res in results:
        pred = res.pred_instances
        h, w = res.ori_shape
        assert pred.masks.dtype == torch.bool
        assert pred.masks.shape[1:] == (h, w)
        assert len(pred.bboxes) == len(pred.scores) == len(pred.labels) \
            == len(pred.masks)
