"""Checkpoints that a kill cannot half-write, and a resume that finds them.

mmengine's ``CheckpointHook`` deletes the oldest kept checkpoint *before*
writing the new one, writes straight to the final ``iter_N.pth``, then
updates ``last_checkpoint``: a kill while writing leaves a truncated
``iter_N.pth`` (and, with ``max_keep_ckpts=1``, no complete checkpoint at
all). :class:`AtomicCheckpointHook` writes ``.iter_N.pth.tmp`` in the same
directory, ``fsync``s it, ``os.replace``s it onto ``iter_N.pth``, then
replaces ``last_checkpoint`` the same way, and only then deletes old
checkpoints. On auto-resume it checks that the checkpoint ``last_checkpoint``
names is complete and falls back to the newest complete one.
"""
import logging
import os
import os.path as osp
import re
import zipfile
from typing import List, Optional, Tuple

import torch
from mmdet.registry import HOOKS as MMDET_HOOKS
from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend
from mmengine.hooks import CheckpointHook
from mmengine.logging import print_log
from mmengine.registry import HOOKS as MMENGINE_HOOKS

TMP_SUFFIX = '.tmp'


def checkpoint_problem(path: str) -> Optional[str]:
    """None if ``path`` is a complete checkpoint, else what is wrong.

    torch's zip checkpoints are checked for their central directory and
    member CRCs (no unpickling); other files must ``torch.load``."""
    if not osp.isfile(path):
        return 'missing'
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                bad = zf.testzip()
            return None if bad is None else f'corrupt member {bad}'
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f'corrupt ({e})'
    try:
        torch.load(path, map_location='cpu')
    except Exception as e:  # truncated legacy pickle, garbage
        return f'not loadable ({type(e).__name__}: {e})'
    return None


def _replace(tmp: str, final: str) -> None:
    with open(tmp, 'rb+') as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    try:  # make the rename durable too
        fd = os.open(osp.dirname(final) or '.', os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _name_pattern(filename_tmpl: str):
    """``iter_{}.pth`` -> a regex matching ``iter_<number>.pth``."""
    return re.compile(
        re.escape(filename_tmpl).replace(r'\{\}', r'(\d+)') + '$')


def find_resume_checkpoint(work_dir: str, ckpt_dir: Optional[str] = None,
                           filename_tmpl: str = 'iter_{}.pth'
                           ) -> Tuple[Optional[str], List[str]]:
    """(checkpoint to resume from or None, warnings).

    The file ``work_dir/last_checkpoint`` names if it is complete and no
    complete ``filename_tmpl`` checkpoint in ``ckpt_dir`` has a higher
    number; otherwise the highest-numbered complete one. A recorded path that
    no longer exists is also looked up by name in ``ckpt_dir`` (a moved work
    dir). Raises ``RuntimeError`` when checkpoints exist but none is complete.
    """
    ckpt_dir = ckpt_dir or work_dir
    pattern = _name_pattern(filename_tmpl)
    found = []
    if osp.isdir(ckpt_dir):
        for name in os.listdir(ckpt_dir):
            m = pattern.match(name)
            if m:
                found.append((int(m.group(1)), osp.join(ckpt_dir, name)))
    found.sort(reverse=True)
    recorded = None
    save_file = osp.join(work_dir, 'last_checkpoint')
    if osp.isfile(save_file):
        with open(save_file) as f:
            recorded = f.read().strip() or None
    warnings = []
    if recorded is not None:
        if not osp.isfile(recorded) and osp.isfile(
                osp.join(ckpt_dir, osp.basename(recorded))):
            recorded = osp.join(ckpt_dir, osp.basename(recorded))
        m = pattern.match(osp.basename(recorded))
        step = int(m.group(1)) if m else None
        problem = checkpoint_problem(recorded)
        if problem is None and (step is None or not found
                                or found[0][0] <= step):
            return recorded, warnings
        if problem is not None:
            warnings.append(f'last_checkpoint names {recorded}, which is '
                            f'{problem}')
    elif found:
        warnings.append(f'{save_file} is missing')
    tried = []
    for _, path in found:
        problem = checkpoint_problem(path)
        if problem is None:
            warnings.append(f'resuming from {path}, the newest complete '
                            'checkpoint')
            return path, warnings
        tried.append(f'{path} ({problem})')
    if tried or (recorded is not None and warnings):
        raise RuntimeError(
            f'cannot resume from {work_dir}: no complete checkpoint '
            f'({"; ".join(warnings + tried)}); delete the broken files or '
            'train without --resume')
    return None, warnings


class AtomicCheckpointHook(CheckpointHook):
    """``CheckpointHook`` (same arguments) whose periodic checkpoints and
    ``last_checkpoint`` are replaced atomically, deleting old checkpoints
    only after the new one is complete, and whose auto-resume skips missing
    or incomplete checkpoints with a warning.

    Only local directories are written atomically (other backends fall back
    to mmengine's behaviour); ``best_*.pth`` and published checkpoints are
    written by mmengine as usual.
    """

    def before_run(self, runner) -> None:
        if not getattr(runner, '_resume', False):
            return
        load_from = getattr(runner, '_load_from', None)
        if load_from is not None:  # an explicit --resume CKPT
            problem = None if '://' in load_from else \
                checkpoint_problem(load_from)
            if problem is not None:
                raise RuntimeError(
                    f'cannot resume from {load_from}: the checkpoint is '
                    f'{problem}; pass another checkpoint, or --resume '
                    'without a value to pick the newest complete one')
            return
        ckpt_dir = self.out_dir or runner.work_dir
        if ckpt_dir != runner.work_dir:  # as CheckpointHook.before_train
            ckpt_dir = osp.join(ckpt_dir,
                                osp.basename(runner.work_dir.rstrip(osp.sep)))
        path, warnings = find_resume_checkpoint(runner.work_dir, ckpt_dir,
                                                self.filename_tmpl)
        for w in warnings:
            print_log(f'AtomicCheckpointHook: {w}', logger='current',
                      level=logging.WARNING)
        if path is not None:
            runner._load_from = path  # load_or_resume() resumes from it

    def before_train(self, runner) -> None:
        super().before_train(runner)
        if is_main_process() and self._atomic():
            pattern = _name_pattern(self.filename_tmpl)
            for name in os.listdir(self.out_dir):  # left by a killed save
                if name.startswith('.') and name.endswith(TMP_SUFFIX) and \
                        pattern.match(name[1:-len(TMP_SUFFIX)]):
                    os.remove(osp.join(self.out_dir, name))

    def _atomic(self) -> bool:
        return isinstance(self.file_backend, LocalBackend) and \
            osp.isdir(self.out_dir)

    def _save_checkpoint_with_step(self, runner, step, meta):
        if not self._atomic():
            return super()._save_checkpoint_with_step(runner, step, meta)
        stale = []
        if self.max_keep_ckpts > 0 and not (
                self.keep_ckpt_ids and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                stale.append(self.keep_ckpt_ids.popleft())
            self.keep_ckpt_ids.append(step)
            runner.message_hub.update_info('keep_ckpt_ids',
                                           list(self.keep_ckpt_ids))
        ckpt_filename = self.filename_tmpl.format(step)
        self.last_ckpt = osp.join(self.out_dir, ckpt_filename)
        runner.message_hub.update_info('last_ckpt', self.last_ckpt)
        tmp_name = f'.{ckpt_filename}{TMP_SUFFIX}'
        runner.save_checkpoint(
            self.out_dir, tmp_name, self.file_client_args,
            save_optimizer=self.save_optimizer,
            save_param_scheduler=self.save_param_scheduler, meta=meta,
            by_epoch=self.by_epoch, backend_args=self.backend_args,
            **self.args)
        if not is_main_process():
            return
        _replace(osp.join(self.out_dir, tmp_name), self.last_ckpt)
        save_file = osp.join(runner.work_dir, 'last_checkpoint')
        with open(save_file + TMP_SUFFIX, 'w') as f:
            f.write(self.last_ckpt)
        _replace(save_file + TMP_SUFFIX, save_file)
        for old in stale:
            path = osp.join(self.out_dir, self.filename_tmpl.format(old))
            if osp.isfile(path):
                os.remove(path)


MMENGINE_HOOKS.register_module(module=AtomicCheckpointHook)
MMDET_HOOKS.register_module(module=AtomicCheckpointHook)
