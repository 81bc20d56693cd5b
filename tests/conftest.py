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
"""
import os.path as osp
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)


def pytest_configure(config):
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
