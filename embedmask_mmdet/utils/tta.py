"""Test-time augmentation switched on in a config, as mmdet's tools/test.py
``--tta`` does it (used by our tools/test.py and the benchmark)."""
import warnings
from copy import deepcopy

from mmengine.config import Config, ConfigDict

__all__ = ['use_tta']


def use_tta(cfg: Config) -> Config:
    """Wraps ``cfg.model`` in its ``tta_model`` and feeds the test loader
    the ``tta_pipeline`` (defaults as in mmdet's tools/test.py, with
    EmbedMaskTTAModel for EmbedMask)."""
    if 'tta_model' not in cfg:
        if cfg.model.get('type') == 'EmbedMask':
            cfg.tta_model = dict(type='EmbedMaskTTAModel')
        else:
            cfg.tta_model = dict(type='DetTTAModel', tta_cfg=dict(
                nms=dict(type='nms', iou_threshold=0.5), max_per_img=100))
        warnings.warn(f'--tta: no tta_model in the config; using '
                      f'{cfg.tta_model["type"]}')
    if 'tta_pipeline' not in cfg:
        warnings.warn('--tta: no tta_pipeline in the config; using the test '
                      'pipeline with a horizontal flip')
        data_cfg = cfg.test_dataloader.dataset
        while 'dataset' in data_cfg:
            data_cfg = data_cfg['dataset']
        cfg.tta_pipeline = deepcopy(data_cfg.pipeline)
        cfg.tta_pipeline[-1] = dict(type='TestTimeAug', transforms=[
            [dict(type='RandomFlip', prob=1.),
             dict(type='RandomFlip', prob=0.)],
            [dict(type='PackDetInputs', meta_keys=(
                'img_id', 'img_path', 'ori_shape', 'img_shape',
                'scale_factor', 'flip', 'flip_direction'))]])
    cfg.model = ConfigDict(**cfg.tta_model, module=cfg.model)
    cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
    return cfg
