"""Every layer the authors initialise starts as in their code.

Rules read from yinghdb/AdelaiDet 94a9b7c (``adet/modeling/embedmask``,
``adet/modeling/fcos/fcos.py``, ``adet/layers/conv_with_kaiming_uniform.py``)
and detectron2's FPN (``c2_xavier_fill``), and for the FCOS-repo design from
yinghdb/EmbedMask e9465cb (``embed_mask.py``: Normal(0.01) towers). Each
weight is checked against its rule's distribution: its bound (uniform
rules) and its standard deviation, which tell the rules apart (for a 3x3
conv of 128 inputs: Normal(0.01) has std 0.010, torch's default 0.017,
kaiming_uniform(a=1) 0.029).
"""
import math
from pathlib import Path

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.utils import register_all_modules
from mmengine.config import Config

import embedmask_mmdet  # noqa: F401

CONFIGS = Path(__file__).resolve().parents[3] / 'configs'
BASE = CONFIGS / '_base_' / 'models' / 'embedmask_r50_fpn.py'
V3 = CONFIGS / 'embedmask' / 'embedmask-v3_r50-caffe_fpn_8xb2-1x_coco.py'


def fan_in(w):
    return w[0].numel()


def kaiming_uniform_a1(w):
    """c2_xavier_fill / conv_with_kaiming_uniform: U(+-sqrt(3 / fan_in))."""
    return 'uniform', math.sqrt(3. / fan_in(w))


def torch_default(w):
    """nn.Conv2d.reset_parameters: kaiming_uniform_(a=sqrt(5)), i.e.
    U(+-1 / sqrt(fan_in)), the bias likewise."""
    return 'uniform', 1. / math.sqrt(fan_in(w))


def normal_001(w):
    return 'normal', 0.01


def assert_follows(name, w, rule):
    kind, scale = rule(w)
    w = w.detach().double().flatten()
    std = w.std().item()
    if kind == 'uniform':
        assert w.abs().max().item() <= scale * (1 + 1e-6), name
        expected = scale / math.sqrt(3.)
    else:
        expected = scale
    # thousands of samples: the sample std is within a few % of the rule's
    assert abs(std - expected) < 0.06 * expected, \
        f'{name}: std {std:.5f}, rule {rule.__name__} gives {expected:.5f}'


def built(cfg_path):
    register_all_modules()
    cfg = Config.fromfile(cfg_path)
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model


def adelaidet_rule(name):
    """(weight rule, bias value or rule or None) of a parameter's layer in
    the AdelaiDet design, None for layers outside the rules (backbone)."""
    if name.startswith('neck.'):
        return kaiming_uniform_a1, 0.
    if name.startswith('bbox_head.'):
        if 'conv_cls' in name:
            return normal_001, -math.log(99.)
        if 'margin_conv' in name:
            return normal_001, math.log(math.log(2.) / 4.)
        return normal_001, 0.
    if 'conv_branch.4.' in name:  # the plain conv closing the tower
        return torch_default, torch_default
    if 'conv_pred' in name:  # EmbedHead
        return normal_001, 0.
    if 'semantic_logits' in name:
        return torch_default, -math.log(99.)
    if name.startswith('mask_head.'):  # refine, tower, seg_head convs
        return kaiming_uniform_a1, None
    return None


def check_model(model, rule_of):
    checked = 0
    params = dict(model.named_parameters())
    for name, w in params.items():
        if w.dim() != 4 or rule_of(name) is None:
            continue
        weight_rule, bias_rule = rule_of(name)
        assert_follows(name, w, weight_rule)
        bias = params.get(name[:-len('weight')] + 'bias')
        if bias_rule is None:
            assert bias is None, f'{name}: the authors\' conv has no bias'
        elif callable(bias_rule):
            assert bias.abs().max() <= bias_rule(w)[1], name
            assert bias.std() > 0, name
        else:
            torch.testing.assert_close(
                bias.detach().double(), torch.full_like(bias, bias_rule,
                                                        dtype=torch.float64),
                msg=name)
        checked += 1
    return checked


def test_adelaidet_design_initialised_as_the_authors():
    model = built(BASE)
    checked = check_model(model, adelaidet_rule)
    # FPN 3 laterals + 5 outputs (P6, P7 included) + box head 4+4+3 +
    # embedding head 4 + pixel branch 3+5+1 + semantic 2+1
    assert checked == 35
    # norm layers of the mask branch: weight 1, bias 0 (BatchNorm defaults)
    bn = model.mask_head.pixel_branch.conv_branch[0].norm
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))
    assert torch.equal(bn.bias, torch.zeros_like(bn.bias))


def test_fcos_repo_design_tower_is_normal():
    model = built(V3)

    def rule(name):
        if name.startswith('mask_head.pixel_branch.'):
            # the FCOS repo's tower convs have a bias (GN, not BN, follows)
            return normal_001, 0.
        if name.startswith('neck.'):
            return kaiming_uniform_a1, 0.
        return None
    # FPN 8 + pixel branch: P3 conv, 3 tower convs, prediction conv
    assert check_model(model, rule) == 8 + 5


@pytest.mark.parametrize('conv_init', ['kaiming', 'xavier'])
def test_conv_init_choice_is_checked(conv_init):
    register_all_modules()
    cfg = Config.fromfile(BASE)
    cfg.model.backbone.init_cfg = None
    cfg.model.mask_head.pixel_branch = dict(type='p3p5_fusion',
                                            conv_init=conv_init)
    with pytest.raises(ValueError, match='pixel_branch.conv_init'):
        MODELS.build(cfg.model)
