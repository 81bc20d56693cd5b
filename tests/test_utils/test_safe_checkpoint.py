"""mmengine Runner checkpoints load under torch's ``weights_only`` loader.

Importing ``embedmask_mmdet`` allowlists exactly the globals that mmengine
checkpoints need; arbitrary pickled objects must still be refused.
"""
import copy
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.logging import HistoryBuffer
from mmengine.model import BaseModel
from mmengine.runner import Runner, load_checkpoint
from torch.utils.data import Dataset

import embedmask_mmdet  # noqa: F401  (installs the allowlist)

TORCH_GE_26 = tuple(
    int(''.join(c for c in v if c.isdigit()) or 0)
    for v in torch.__version__.split('+')[0].split('.')[:2]) >= (2, 6)
# torch < 2.6 (2.1 - 2.5 are supported too) loads with weights_only=False by
# default, as mmengine always did: the allowlist is for 2.6's safe default,
# and a default torch.load there refuses nothing (torch's own behaviour)
SAFE_DEFAULT = pytest.mark.skipif(
    not TORCH_GE_26, reason='torch < 2.6 loads with weights_only=False by '
    'default: no safe loader to allowlist for or to refuse with')

MAX_ITERS = 4


class ToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y, mode='tensor'):
        out = self.linear(x)
        if mode == 'loss':
            return dict(loss=((out - y)**2).mean())
        return out


class ToyDataset(Dataset):

    def __len__(self):
        return 8

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(idx)
        return dict(
            x=torch.randn(2, generator=g), y=torch.randn(1, generator=g))


class NumpyInfoHook(Hook):
    """Puts numpy values into the message hub, like real hooks may do."""

    def after_train_iter(self, runner, batch_idx, data_batch=None,
                         outputs=None):
        runner.message_hub.update_info('np_float', np.float64(1.5))
        runner.message_hub.update_info('np_int', np.int64(3))
        runner.message_hub.update_info('np_bool', np.bool_(True))
        runner.message_hub.update_info('np_array',
                                       np.arange(3, dtype=np.float32))
        runner.message_hub.update_scalar('train/np_scalar', np.float32(0.5))


class RecordResumeHook(Hook):
    """Records the state right after ``load_or_resume``."""

    def before_train(self, runner):
        self.iter = runner.iter
        self.optim_state = copy.deepcopy(
            runner.optim_wrapper.optimizer.state_dict())
        self.loss_history = runner.message_hub.get_scalar(
            'train/loss').data[0].copy()


_n_runners = 0


def make_runner(work_dir, max_iters=MAX_ITERS, **kwargs):
    global _n_runners
    _n_runners += 1
    return Runner(
        model=ToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'safe_ckpt_{os.getpid()}_{_n_runners}',
        train_dataloader=dict(
            dataset=ToyDataset(),
            batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1, momentum=0.9)),
        param_scheduler=dict(
            type='MultiStepLR', milestones=[2], gamma=0.1, by_epoch=False),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=100),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(
                type='CheckpointHook', interval=2, by_epoch=False)),
        randomness=dict(seed=0),
        default_scope='mmengine',
        **kwargs)


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    work_dir = tmp_path_factory.mktemp('train')
    runner = make_runner(work_dir, custom_hooks=[NumpyInfoHook()])
    runner.train()
    ckpt = work_dir / f'iter_{MAX_ITERS}.pth'
    assert ckpt.is_file()
    return work_dir, str(ckpt)


def test_env_not_forced():
    assert os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD') is None


def test_default_torch_load(trained):
    _, ckpt = trained
    # default args: weights_only=True on torch >= 2.6
    state = torch.load(ckpt)
    assert state['meta']['iter'] == MAX_ITERS
    hub = state['message_hub']
    loss = hub['log_scalars']['train/loss']
    assert isinstance(loss, HistoryBuffer)
    assert len(loss.data[0]) == MAX_ITERS
    assert loss.statistics('mean') == pytest.approx(loss.data[0].mean())
    info = hub['runtime_info']
    assert info['np_float'] == 1.5 and isinstance(info['np_float'], np.float64)
    assert info['np_int'] == 3 and isinstance(info['np_int'], np.int64)
    assert info['np_bool'] is np.True_
    np.testing.assert_array_equal(info['np_array'], [0., 1., 2.])
    assert info['np_array'].dtype == np.float32
    assert 'momentum_buffer' in state['optimizer']['state'][0]
    # MultiStepLR keeps its milestones in a collections.Counter
    assert dict(state['param_schedulers'][0]['milestones']) == {2: 1}
    # the explicit safe load behaves the same (allowlist: torch >= 2.4)
    if hasattr(torch.serialization, 'add_safe_globals'):
        torch.load(ckpt, weights_only=True)


@pytest.mark.skipif(not TORCH_GE_26, reason='weights_only default needs 2.6')
def test_default_load_fails_without_allowlist(trained):
    """Proves the previous test is not vacuous."""
    _, ckpt = trained
    proc = subprocess.run(
        [sys.executable, '-c', 'import sys, torch; torch.load(sys.argv[1])',
         ckpt],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert 'Unsupported global' in proc.stderr
    assert 'HistoryBuffer' in proc.stderr


@pytest.mark.skipif(not TORCH_GE_26,
                    reason='(callable, name) allowlist entries need torch 2.6')
def test_numpy_1x_and_2x_names(tmp_path):
    """Pickles written under the other numpy major version load too."""
    obj = dict(a=np.arange(3.0), s=np.float64(2.5), i=np.int64(7))
    path = tmp_path / 'np.pth'
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    new, old = b'numpy._core.multiarray', b'numpy.core.multiarray'
    assert new in data or old in data
    swapped = data.replace(new, old) if new in data else data.replace(
        old, new)
    path.write_bytes(swapped)
    loaded = torch.load(path, weights_only=True)
    np.testing.assert_array_equal(loaded['a'], obj['a'])
    assert loaded['s'] == 2.5 and loaded['i'] == 7


@pytest.mark.slow  # a Runner trains and resumes, twice
@pytest.mark.parametrize('mode', ['load_from', 'auto'])
def test_runner_resume(trained, tmp_path, mode):
    work_dir, ckpt = trained
    saved = torch.load(ckpt)
    record = RecordResumeHook()
    if mode == 'load_from':
        runner = make_runner(
            tmp_path, max_iters=MAX_ITERS + 2, load_from=ckpt, resume=True,
            custom_hooks=[record])
    else:  # cfg resume=True, checkpoint found through work_dir/last_checkpoint
        resume_dir = tmp_path / 'resume'
        shutil.copytree(work_dir, resume_dir)
        runner = make_runner(
            resume_dir, max_iters=MAX_ITERS + 2, resume=True,
            custom_hooks=[record])
    runner.train()
    assert record.iter == MAX_ITERS
    buf = record.optim_state['state'][0]['momentum_buffer']
    # the Runner puts the model (and so the optimizer state) on CUDA
    # where there is one; the saved tensors were loaded to the CPU
    torch.testing.assert_close(
        buf.cpu(), saved['optimizer']['state'][0]['momentum_buffer'].cpu())
    np.testing.assert_array_equal(
        record.loss_history,
        saved['message_hub']['log_scalars']['train/loss'].data[0])
    assert runner.iter == MAX_ITERS + 2
    # lr decayed by the MultiStepLR milestone before the checkpoint
    assert runner.optim_wrapper.get_lr()['lr'][0] == pytest.approx(0.01)


def test_load_checkpoint_apis(trained, tmp_path):
    _, ckpt = trained
    saved = torch.load(ckpt)['state_dict']

    model = ToyModel()
    load_checkpoint(model, ckpt)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, saved[k])

    runner = make_runner(tmp_path)
    runner.load_checkpoint(ckpt)
    for k, v in runner.model.state_dict().items():
        torch.testing.assert_close(v.cpu(), saved[k].cpu())


# ---------------------------------------------------------------------------
# Arbitrary objects must still be refused.


class CustomObject:

    def __init__(self):
        self.value = 1


class SystemPayload:

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}', )


class WriteFilePayload:
    """Harmless callable that would leave a file behind if executed."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return np.ndarray.tofile, (np.zeros(1), self.marker)


class GetattrPayload:
    """Tries to reach beyond HistoryBuffer methods through getattr."""

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __reduce__(self):
        return getattr, (self.target, self.name)


def _save(obj, path):
    torch.save({'state_dict': {}, 'meta': {}, 'payload': obj}, path)
    return str(path)


@SAFE_DEFAULT
def test_custom_object_refused(tmp_path):
    path = _save(CustomObject(), tmp_path / 'custom.pth')
    with pytest.raises(pickle.UnpicklingError, match='CustomObject'):
        torch.load(path)
    # mmengine's loader names the file and explains how to proceed
    with pytest.raises(pickle.UnpicklingError) as exc:
        load_checkpoint(ToyModel(), path)
    assert path in str(exc.value)
    assert 'weights_only=False' in str(exc.value)


@SAFE_DEFAULT
@pytest.mark.parametrize('payload', ['system', 'tofile'])
def test_code_execution_payload_refused(tmp_path, payload):
    marker = tmp_path / f'pwned_{payload}'
    obj = (SystemPayload(marker) if payload == 'system' else
           WriteFilePayload(str(marker)))
    path = _save(obj, tmp_path / f'{payload}.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(ToyModel(), path)
    assert not marker.exists()


@SAFE_DEFAULT
@pytest.mark.parametrize('target,name',
                         [(HistoryBuffer, '__init__'),
                          (HistoryBuffer, '_set_default_statistics'),
                          (np.ndarray, 'tofile'), (np.dtype, 'newbyteorder')])
def test_getattr_restricted(tmp_path, target, name):
    path = _save(GetattrPayload(target, name), tmp_path / 'getattr.pth')
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path)


def test_getattr_allows_history_buffer_methods(tmp_path):
    path = _save(GetattrPayload(HistoryBuffer, 'mean'), tmp_path / 'ok.pth')
    assert torch.load(path)['payload'] is HistoryBuffer.mean


def test_idempotent():
    from embedmask_mmdet.utils import (allow_mmengine_checkpoint_globals,
                                       mmengine_checkpoint_safe_globals)
    allow_mmengine_checkpoint_globals()
    allow_mmengine_checkpoint_globals()
    names = [g[1] for g in mmengine_checkpoint_safe_globals()
             if isinstance(g, tuple)]
    if TORCH_GE_26:
        assert 'builtins.getattr' in names
    assert getattr not in mmengine_checkpoint_safe_globals()
