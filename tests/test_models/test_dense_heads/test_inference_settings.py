"""The heads' inference settings (models/utils/inference_settings.py): one
table of defaults, unknown keys refused with their name, the checks of the
values, every config's test_cfg resolved by both heads, and ``head.settings``
following ``head.test_cfg`` when it is reassigned or edited."""
import dataclasses
from pathlib import Path

import pytest
from mmdet.registry import MODELS
from mmengine.config import Config

from embedmask_mmdet.models.utils.inference_settings import (
    BOX_DEFAULTS, KNOWN_KEYS, MASK_DEFAULTS, BoxInferenceSettings,
    MaskInferenceSettings)
from embedmask_mmdet.models.utils.mask_paste import (MAX_PASTE_ELEMENTS,
                                                     chunk_size)
from heads_common import bbox_head_cfg, make_test_cfg, mask_head_cfg

CONFIG_DIR = Path(__file__).resolve().parents[3] / 'configs'
# as tests/test_configs enumerates them: every config but the bases
CONFIGS = sorted(
    p for p in CONFIG_DIR.rglob('*.py')
    if '_base_' not in p.relative_to(CONFIG_DIR).parts)
SETTINGS = (BoxInferenceSettings, MaskInferenceSettings)


def test_defaults_of_the_table():
    """The values the code used before the table (a change here changes
    every model that does not set the key)."""
    assert dataclasses.asdict(BoxInferenceSettings.from_cfg(None)) == dict(
        score_thr=0., nms_pre=-1, min_bbox_size=-1, nms=None,
        max_per_img=100, score_type='cls_ctr', candidate_rule='mmdet')
    assert dataclasses.asdict(MaskInferenceSettings.from_cfg({})) == dict(
        mask_thr=0.5, mask_resample='prob', window_padding=2,
        crop_to_box=False, crop_padding=2,
        max_paste_elements=MAX_PASTE_ELEMENTS, paste_regions=None)
    assert set(KNOWN_KEYS) == set(BOX_DEFAULTS) | set(MASK_DEFAULTS)
    assert not set(BOX_DEFAULTS) & set(MASK_DEFAULTS)


def test_values_set_are_kept():
    cfg = make_test_cfg(candidate_rule='fcos_repo', mask_resample='log_prob',
                        window_padding=3, paste_regions=False,
                        max_paste_elements=1000, crop_padding=1)
    box = BoxInferenceSettings.from_cfg(cfg)
    mask = MaskInferenceSettings.from_cfg(cfg)
    assert (box.nms_pre, box.min_bbox_size, box.max_per_img) == (1000, 0, 20)
    assert box.nms == dict(type='nms', iou_threshold=0.6)
    assert box.candidate_rule == 'fcos_repo'
    assert (mask.mask_resample, mask.window_padding, mask.paste_regions,
            mask.max_paste_elements, mask.crop_padding) == (
                'log_prob', 3, False, 1000, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        mask.mask_thr = 0.3


@pytest.mark.parametrize('settings_cls', SETTINGS)
def test_each_head_accepts_the_other_heads_keys(settings_cls):
    # mmdet's segmentor gives both heads the one model.test_cfg
    settings_cls.from_cfg({k: v for k, v in make_test_cfg(
        candidate_rule='adelaidet', thresh_with_ctr=True,
        mask_resample='prob', window_padding=2, crop_padding=2,
        max_paste_elements=10, paste_regions=None).items()})


@pytest.mark.parametrize('settings_cls,owner', [
    (BoxInferenceSettings, 'EmbedMaskBboxHead'),
    (MaskInferenceSettings, 'EmbedMaskMaskHead')])
def test_unknown_key_refused_with_its_name(settings_cls, owner):
    with pytest.raises(ValueError) as e:
        settings_cls.from_cfg(make_test_cfg(mask_thresh=0.5))
    msg = str(e.value)
    assert 'test_cfg.mask_thresh' in msg and msg.startswith(owner)
    assert all(k in msg for k in KNOWN_KEYS)


@pytest.mark.parametrize('build_cfg,owner', [
    (bbox_head_cfg, 'EmbedMaskBboxHead'), (mask_head_cfg, 'EmbedMaskMaskHead')])
def test_heads_refuse_unknown_keys_when_built(build_cfg, owner):
    with pytest.raises(ValueError, match=f'{owner}: test_cfg.iou_thr is not'):
        MODELS.build(build_cfg(test_cfg=make_test_cfg(iou_thr=0.5)))


def test_candidate_rule_from_thresh_with_ctr_and_conflicts():
    rule = lambda **kw: BoxInferenceSettings.from_cfg(kw).candidate_rule  # noqa: E731,E501
    assert rule() == 'mmdet'
    assert rule(thresh_with_ctr=True) == 'adelaidet'
    assert rule(thresh_with_ctr=False) == 'mmdet'
    assert rule(candidate_rule='adelaidet', thresh_with_ctr=True) == \
        'adelaidet'
    assert rule(candidate_rule='fcos_repo', thresh_with_ctr=False) == \
        'fcos_repo'
    with pytest.raises(ValueError, match='contradicts'):
        rule(candidate_rule='fcos_repo', thresh_with_ctr=True)
    with pytest.raises(ValueError, match='contradicts'):
        rule(candidate_rule='adelaidet', thresh_with_ctr=False)
    with pytest.raises(ValueError, match='candidate_rule must be one of'):
        rule(candidate_rule='fcos')


@pytest.mark.parametrize('settings_cls,cfg,key', [
    (BoxInferenceSettings, dict(score_type='cls'), 'score_type'),
    (MaskInferenceSettings, dict(mask_thr=0.), 'mask_thr'),
    (MaskInferenceSettings, dict(mask_thr=1.), 'mask_thr'),
    (MaskInferenceSettings, dict(mask_resample='nearest'), 'mask_resample'),
])
def test_bad_values_refused(settings_cls, cfg, key):
    with pytest.raises(ValueError, match=key):
        settings_cls.from_cfg(cfg)


@pytest.mark.parametrize('path', CONFIGS,
                         ids=[str(p.relative_to(CONFIG_DIR)) for p in CONFIGS])
def test_every_config_resolves(path):
    test_cfg = Config.fromfile(str(path)).model.get('test_cfg')
    for settings_cls in SETTINGS:
        settings_cls.from_cfg(test_cfg)


def test_head_settings_follow_test_cfg():
    head = MODELS.build(mask_head_cfg())
    first = head.settings
    assert head.settings is first  # resolved once while unchanged
    head.test_cfg.mask_thr = 0.3  # edited in place
    assert head.settings.mask_thr == 0.3
    head.test_cfg = make_test_cfg(mask_resample='log_prob')  # reassigned
    assert head.settings.mask_resample == 'log_prob'
    assert head.settings.mask_thr == 0.5
    head.test_cfg = None
    assert head.settings == MaskInferenceSettings.from_cfg(None)
    head.test_cfg = make_test_cfg(mask_thr=2.)
    with pytest.raises(ValueError, match='mask_thr'):
        head.settings
    with pytest.raises(AttributeError, match='test_cfg'):
        head.settings = first


def test_box_head_settings_and_an_explicit_cfg():
    head = MODELS.build(bbox_head_cfg())
    assert head.settings.candidate_rule == 'mmdet'
    assert head._settings_for(None) is head.settings
    assert head._settings_for(head.test_cfg) is head.settings
    other = make_test_cfg(thresh_with_ctr=True, score_type='sqrt_cls_ctr')
    assert head._settings_for(other).candidate_rule == 'adelaidet'
    assert head.settings.score_type == 'cls_ctr'


def test_chunk_size():
    assert chunk_size(100, 30) == 3
    assert chunk_size(100, 300) == 1  # at least one item
    assert chunk_size(100, 0) == 100  # empty items
    assert chunk_size(MAX_PASTE_ELEMENTS, 1) == MAX_PASTE_ELEMENTS
