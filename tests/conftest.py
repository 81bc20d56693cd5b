"""Suite-wide pytest setup.

- ``tools/`` is importable as a root (``analysis_tools.benchmark``, the study
  behind ``make bench``, lives there, outside the installed library).
- ``@pytest.mark.slow`` marks subprocess, end-to-end and training tests:
  ``make test`` (CI) runs everything, ``make test-fast`` skips them.
"""
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOLS = osp.join(ROOT, 'tools')
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)


def pytest_configure(config):
    config.addinivalue_line(
        'markers', 'slow: subprocess / end-to-end / training test (make test '
        'runs it, make test-fast skips it)')
