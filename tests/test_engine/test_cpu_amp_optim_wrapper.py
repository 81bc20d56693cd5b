"""``tools/train.py --amp`` on a CPU: CpuAmpOptimWrapper runs the forward
under bf16 autocast (no loss scaling) and otherwise trains like OptimWrapper;
on a GPU it is mmengine's AmpOptimWrapper."""
import importlib.util
import math
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.optim import AmpOptimWrapper
from mmengine.registry import OPTIM_WRAPPERS, init_default_scope
from mmengine.runner import Runner

from embedmask_mmdet.datasets import generate_synthetic_coco
from embedmask_mmdet.engine import CpuAmpOptimWrapper, enable_amp
from embedmask_mmdet.models.utils.torch_compat import (autocast_dtype,
                                                       autocast_enabled)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CPU_CONFIG = osp.join(ROOT,
                      'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')
SIZE = 128
ITERS = 30
ON_CPU = not torch.cuda.is_available()
# torch >= 2.3: float16 CPU autocast and a CPU GradScaler (2.1 / 2.2: bf16)
CPU_FP16 = hasattr(torch.amp, 'GradScaler')


def load_train_tool():
    """tools/train.py as a module (it is a script, not a package member)."""
    spec = importlib.util.spec_from_file_location(
        'embedmask_tools_train', osp.join(ROOT, 'tools/train.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_wrapper(model, **kwargs):
    init_default_scope('mmdet')
    return OPTIM_WRAPPERS.build(dict(
        type='CpuAmpOptimWrapper',
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        **kwargs))


def test_enable_amp_keeps_the_rest_of_optim_wrapper():
    cfg = Config(dict(optim_wrapper=dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
        clip_grad=dict(max_norm=35, norm_type=2),
        paramwise_cfg=dict(norm_decay_mult=0.))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.to_dict() == dict(
        type='CpuAmpOptimWrapper', optimizer=dict(type='AdamW', lr=1e-3),
        clip_grad=dict(max_norm=35, norm_type=2),
        paramwise_cfg=dict(norm_decay_mult=0.), loss_scale='dynamic')
    # an AMP config keeps its own scaler and dtype settings
    cfg = Config(dict(optim_wrapper=dict(
        type='AmpOptimWrapper', loss_scale=512., dtype='bfloat16',
        optimizer=dict(type='SGD', lr=0.01))))
    enable_amp(cfg)
    assert cfg.optim_wrapper.type == 'CpuAmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 512.
    assert cfg.optim_wrapper.dtype == 'bfloat16'
    with pytest.raises(ValueError, match='ApexOptimWrapper'):
        enable_amp(Config(dict(optim_wrapper=dict(type='ApexOptimWrapper'))))
    with pytest.raises(ValueError, match='optim_wrapper'):
        enable_amp(Config(dict()))


@pytest.mark.skipif(not ON_CPU, reason='the CPU branch of the wrapper')
def test_wrapper_on_cpu():
    model = nn.Linear(4, 3)
    wrapper = build_wrapper(model, clip_grad=dict(max_norm=1.))
    assert isinstance(wrapper, AmpOptimWrapper)   # isinstance checks hold
    assert wrapper.cast_dtype == torch.bfloat16 and wrapper.loss_scaler is None
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    wrapper.update_params(out.float().sum())
    assert model.weight.dtype == torch.float32
    assert not torch.equal(before, model.weight)
    # bf16: OptimWrapper's state dict; a GPU AMP checkpoint's scaler state
    # is dropped on load
    state = wrapper.state_dict()
    assert 'loss_scaler' not in state
    state['loss_scaler'] = torch.amp.GradScaler('cpu').state_dict() \
        if CPU_FP16 else {'scale': 65536., '_growth_tracker': 0}
    wrapper.load_state_dict(state)
    with pytest.raises(ValueError, match='CPU autocast'):
        build_wrapper(model, dtype='float64')

    if not CPU_FP16:  # torch < 2.3: refused with the torch it needs
        with pytest.raises(ValueError, match=r'needs torch >= 2\.3'):
            build_wrapper(model, dtype='float16', loss_scale=256.)
        return
    # fp16 on a CPU gets a CPU GradScaler built from loss_scale
    wrapper = build_wrapper(model, dtype='float16', loss_scale=256.)
    assert isinstance(wrapper.loss_scaler, torch.amp.GradScaler)
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4))
    assert out.dtype == torch.float16
    wrapper.update_params(out.float().sum())
    assert wrapper.state_dict()['loss_scaler']['scale'] == 256.


@pytest.mark.skipif(ON_CPU, reason='needs CUDA')
def test_wrapper_on_gpu_is_amp_optim_wrapper():
    model = nn.Linear(4, 3).cuda()
    wrapper = build_wrapper(model)
    ref = AmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), 0.1))
    assert wrapper.device_type == 'cuda' and wrapper.cast_dtype is None
    assert type(wrapper.loss_scaler) is type(ref.loss_scaler)
    with wrapper.optim_context(model):
        out = model(torch.randn(2, 4, device='cuda'))
    assert out.dtype == torch.float16
    wrapper.update_params(out.float().sum())
    assert 'loss_scaler' in wrapper.state_dict()


class RecordOutputs(Hook):
    """Keeps what each training iteration logs (train_step's log_vars)."""

    def __init__(self):
        self.logged = []

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        self.logged.append({k: float(torch.as_tensor(v).detach())
                            for k, v in outputs.items()})


@pytest.mark.slow
def test_train_py_amp_trains_the_cpu_config(tmp_path):
    data_root = str(tmp_path / 'data') + '/'
    generate_synthetic_coco(data_root, num_train=8, num_val=0, seed=5,
                            size=(SIZE, SIZE))
    train = load_train_tool()
    args = train.parse_args([CPU_CONFIG, '--amp',
                             '--work-dir', str(tmp_path / 'work')])
    cfg = train.build_cfg(args)    # what `tools/train.py --amp` trains
    ref = Config.fromfile(CPU_CONFIG).optim_wrapper
    assert cfg.optim_wrapper.type == 'CpuAmpOptimWrapper'
    for key in ('optimizer', 'clip_grad'):
        assert cfg.optim_wrapper[key] == ref[key]

    # the built-in dataset at SIZE px, batch 2, no validation
    loader = cfg.train_dataloader
    loader.batch_size = 2
    loader.num_workers = 0
    loader.persistent_workers = False
    loader.dataset.data_root = data_root
    for step in loader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = (SIZE, SIZE)
    cfg.val_dataloader = cfg.val_cfg = cfg.val_evaluator = None
    cfg.test_dataloader = cfg.test_cfg = cfg.test_evaluator = None
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=ITERS)
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=ITERS)
    cfg.default_hooks.logger.interval = 10
    cfg.randomness = dict(seed=0)

    runner = Runner.from_cfg(cfg)
    conv_dtypes = []

    def on_conv(module, inputs, output):
        if module.training:
            device = output.device.type
            conv_dtypes.append((output.dtype,
                                autocast_enabled(device),
                                autocast_dtype(device)))

    model = runner.model
    conv = model.backbone.conv1
    conv.register_forward_hook(on_conv)
    recorder = RecordOutputs()
    runner.register_hook(recorder)
    runner.train()

    wrapper = runner.optim_wrapper    # built by train()
    assert isinstance(wrapper, CpuAmpOptimWrapper)
    amp_dtype = torch.bfloat16 if ON_CPU else torch.float16
    if ON_CPU:
        assert wrapper.cast_dtype == torch.bfloat16
        assert wrapper.loss_scaler is None

    assert len(recorder.logged) == ITERS
    print({k: [round(r[k], 3) for r in recorder.logged[::10]]
           for k in recorder.logged[0]})
    for it, logged in enumerate(recorder.logged):
        losses = {k: v for k, v in logged.items() if 'loss' in k}
        assert 'loss' in losses and len(losses) > 1, logged
        bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
        assert not bad, f'iteration {it + 1}: non-finite {bad}'
    # the forward ran under autocast in amp_dtype at every iteration
    assert len(conv_dtypes) == ITERS
    assert set(conv_dtypes) == {(amp_dtype, True, amp_dtype)}, conv_dtypes[:3]
    # outside the optim context: float32 master weights, autocast off
    assert conv.weight.dtype == torch.float32
    assert not autocast_enabled('cpu')
    # every step was taken (none skipped by a scaler)
    steps = {int(s['step']) for s in wrapper.optimizer.state.values()}
    assert steps == {ITERS}
