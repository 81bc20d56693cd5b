"""Suite-wide pytest setup.

- ``tools/`` is importable as a root (``analysis_tools.benchmark``, the study
  behind ``make bench``, lives there, outside the installed library).
- ``@pytest.mark.slow`` marks subprocess, end-to-end and training tests:
  ``make test`` (CI) runs everything, ``make test-fast`` skips them;
  ``@pytest.mark.bench`` the benchmark smoke tests (slow too).
- One session fixture, not import-time code in test modules: mmdet's
  registries with the ``mmdet`` default scope, and torch on one thread
  (two threads spin-wait on a loaded 2-core machine; the suite's tests
  check results, never speed).
- ``overfit``: the trained tiny model that the bf16 and INT8 tests
  (tests/test_deploy) share, trained once per session.
- ``make test`` runs on 2 pytest-xdist workers with ``--dist loadfile``:
  each test file runs whole on one worker, so its module fixtures (a
  trained model, the benchmark's tiny run) are built once. The files that
  take minutes are sent first (``LONG_FILES``), so no worker is left with
  a 7-minute file at the end. (Not ``loadgroup``: pytest-xdist 3.8 cannot
  regroup tests under pytest 9.2, whose node ids it no longer rewrites.)
  Under xdist the tools that tests run as subprocesses get one OpenMP
  thread, like the workers.
"""
import copy
import json
import os
import os.path as osp
import sys
from collections import Counter

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)


# the test files that take minutes, longest first (the durations of `make
# test` on 2 cores; docs/getting_started.md); the two that share `overfit`
# next to each other, so that one worker usually runs both on one training
LONG_FILES = ('test_deploy/test_onnx_parity.py', 'test_deploy/test_quantize.py',
              'test_deploy/test_reduced_precision.py',
              'test_deploy/test_large_image.py',
              'test_tools/test_benchmark.py', 'test_configs/test_learning.py',
              'test_tools/test_tools_e2e.py',
              'test_robustness/test_robustness_training.py',
              'test_engine/test_cpu_amp_optim_wrapper.py')


def pytest_collection_modifyitems(config, items):
    """The long files first, each in its own order (xdist's ``loadfile``
    sends each file to one worker, in this order)."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    tests = osp.join(ROOT, 'tests')
    order = {id(item): i for i, item in enumerate(items)}
    items.sort(key=lambda item: (
        rank.get(osp.relpath(str(item.path), tests), len(rank)),
        order[id(item)]))


def pytest_configure(config):
    if os.environ.get('PYTEST_XDIST_WORKER'):
        # the other worker keeps the second core busy: a tool run as a
        # subprocess on two OpenMP threads would spin-wait on it (a PyTorch
        # predict beside a training measured 50x slower than alone)
        for key in ('OMP_NUM_THREADS', 'MKL_NUM_THREADS'):
            os.environ.setdefault(key, '1')
    config.addinivalue_line(
        'markers', 'slow: subprocess / end-to-end / training test (make test '
        'runs it, make test-fast skips it)')
    config.addinivalue_line(
        'markers', 'bench: the benchmark study\'s smoke tests (slow; make '
        'test runs them, make test-fast skips them)')


@pytest.fixture(scope='session', autouse=True)
def suite_setup():
    import torch
    from mmdet.utils import register_all_modules
    register_all_modules(init_default_scope=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def mmdet_default_scope():
    """Each test starts in the default scope a mmdet user's process has:
    a Runner built with ``default_scope='mmengine'`` by an earlier test
    leaves that scope current, and tests that build from mmdet's registries
    then failed, depending on which files shared their xdist worker."""
    from mmengine.registry import DefaultScope, init_default_scope
    current = DefaultScope.get_current_instance()
    if current is None or current.scope_name != 'mmdet':
        init_default_scope('mmdet')


# the overfit model's training length (why a model with real AP:
# tests/test_deploy/test_reduced_precision.py)
OVERFIT_ITERS = 150


@pytest.fixture(scope='session')
def overfit(tmp_path_factory):
    """A tiny EmbedMask trained 150 iterations on 8 generated 128-px images
    and tested on them; its config, checkpoint and ONNX export on disk
    (shared: tests read it, and one that changes the config works on a
    deepcopy; the teardown checks that the config came back unchanged)."""
    # tests/test_deploy is on sys.path by now: only its tests request this
    from mmengine.runner import Runner
    from test_onnx_parity import SIZE, tiny_config

    from embedmask_mmdet.datasets import generate_synthetic_coco
    from embedmask_mmdet.deploy import export_onnx
    base = tmp_path_factory.mktemp('precision')
    data_root = str(base / 'data') + '/'
    generate_synthetic_coco(data_root, num_train=8, num_val=1, seed=3,
                            size=(SIZE, SIZE))
    cfg = tiny_config(data_root, str(base / 'work'), {})
    ann_file = 'annotations/instances_train.json'
    for key in ('val_dataloader', 'test_dataloader'):
        cfg[key].dataset.ann_file = ann_file
        cfg[key].dataset.data_prefix = dict(img='train/')
    for key in ('val_evaluator', 'test_evaluator'):
        cfg[key].ann_file = data_root + ann_file
    iters = OVERFIT_ITERS
    cfg.train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters,
                         val_interval=iters + 1)
    cfg.optim_wrapper.optimizer.lr = 4e-3
    cfg.param_scheduler = [
        dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0,
             end=10),
        dict(type='MultiStepLR', by_epoch=False, begin=0, end=iters,
             milestones=[int(iters * 0.8)], gamma=0.1)]
    cfg.default_hooks.checkpoint = dict(type='CheckpointHook', by_epoch=False,
                                        interval=iters)
    cfg.default_hooks.logger = dict(type='LoggerHook', interval=50)
    runner = Runner.from_cfg(cfg)
    runner.train()
    del runner
    with open(osp.join(cfg.work_dir, 'last_checkpoint')) as f:
        ckpt = f.read().strip()
    config = str(base / 'tiny.py')
    cfg.dump(config)
    onnx_file = str(base / 'tiny.onnx')
    export_onnx(cfg, ckpt, onnx_file)
    with open(data_root + ann_file) as f:
        per_class = Counter(a['category_id'] for a in json.load(f)[
            'annotations'])
    before = copy.deepcopy(cfg.to_dict())
    yield dict(cfg=cfg, config=config, ckpt=ckpt, onnx=onnx_file,
               per_class=per_class)
    assert cfg.to_dict() == before, \
        'a test changed the shared overfit config; deepcopy it first'
