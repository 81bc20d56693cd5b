"""Test-only modules for tests/test_robustness/ (test_robustness_training.py
imports them): a toy model and dataset, a
hook that kills one rank, and a training entry point that can be killed in
the middle of writing a checkpoint.

Imported by configs through ``custom_imports`` (with tests/test_robustness/ on PYTHONPATH)
and run as a script by the checkpoint fault tests:

    python tests/test_robustness/robustness_helpers.py WORK_DIR MAX_ITERS HOOK_TYPE MAX_KEEP \
        [KILL_AT_SAVE]
"""
import os
import signal
import sys

import torch
import torch.nn as nn
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import DATASETS, HOOKS, MODELS
from torch.utils.data import Dataset


@MODELS.register_module(force=True)
class RobustnessToyModel(BaseModel):

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, x, y, mode='tensor'):
        out = self.linear(x)
        if mode == 'loss':
            return dict(loss=((out - y)**2).mean())
        return out


@DATASETS.register_module(force=True)
class RobustnessToyDataset(Dataset):

    def __len__(self):
        return 16

    def __getitem__(self, idx):
        g = torch.Generator().manual_seed(idx)
        return dict(x=torch.randn(2, generator=g),
                    y=torch.randn(1, generator=g))


@HOOKS.register_module(force=True)
class DieOnRankHook(Hook):
    """``os._exit(1)`` on rank ``rank`` before iteration ``at_iter``."""

    def __init__(self, rank=1, at_iter=2):
        self.rank, self.at_iter = rank, at_iter

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        if runner.rank == self.rank and runner.iter == self.at_iter:
            sys.stderr.write(f'DieOnRankHook: rank {self.rank} exits at '
                             f'iteration {self.at_iter}\n')
            sys.stderr.flush()
            os._exit(1)


class RecordStartIterHook(Hook):
    """Records ``runner.iter`` once ``load_or_resume`` has run."""

    def before_train(self, runner):
        self.start_iter = runner.iter


def toy_runner(work_dir, max_iters, hook_type='AtomicCheckpointHook',
               max_keep_ckpts=-1, custom_hooks=(), **kwargs):
    import embedmask_mmdet  # noqa: F401  (registers AtomicCheckpointHook)
    from mmengine.runner import Runner
    toy_runner.count = getattr(toy_runner, 'count', 0) + 1
    return Runner(
        model=RobustnessToyModel(),
        work_dir=str(work_dir),
        experiment_name=f'robust_{os.getpid()}_{toy_runner.count}',
        train_dataloader=dict(
            dataset=RobustnessToyDataset(), batch_size=2,
            sampler=dict(type='DefaultSampler', shuffle=False),
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters,
                       val_interval=1000),
        default_hooks=dict(
            logger=dict(type='LoggerHook', interval=1),
            checkpoint=dict(type=hook_type, interval=1, by_epoch=False,
                            max_keep_ckpts=max_keep_ckpts)),
        custom_hooks=list(custom_hooks), randomness=dict(seed=0),
        default_scope='mmengine', **kwargs)


def kill_during_save(at_save: int) -> None:
    """SIGKILL this process halfway through writing checkpoint ``at_save``
    (counting from 1) to the local disk."""
    from mmengine.fileio.backends.local_backend import LocalBackend
    put = LocalBackend.put
    calls = [0]

    def put_and_die(self, obj, filepath):
        if not str(filepath).endswith(('.pth', '.pth.tmp')):
            return put(self, obj, filepath)
        calls[0] += 1
        if calls[0] < at_save:
            return put(self, obj, filepath)
        with open(filepath, 'wb') as f:
            f.write(obj[:len(obj) // 2])
            f.flush()
            os.fsync(f.fileno())
        os.kill(os.getpid(), signal.SIGKILL)

    LocalBackend.put = put_and_die


if __name__ == '__main__':
    work_dir, max_iters, hook_type, max_keep = sys.argv[1:5]
    if len(sys.argv) > 5:
        kill_during_save(int(sys.argv[5]))
    torch.set_num_threads(1)
    toy_runner(work_dir, int(max_iters), hook_type, int(max_keep)).train()
