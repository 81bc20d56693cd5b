"""tools/gpu_check.sh on a machine without a GPU: --dry-run checks its
arguments, imports and configs (what CI can check of it); bad arguments
are refused with a message naming them. The GPU run itself is never a
test (docs/gpu.md has its figures)."""
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(ROOT, 'tools', 'gpu_check.sh')
pytestmark = pytest.mark.slow  # subprocesses that import mmdet


def run(*args):
    return subprocess.run(['bash', SCRIPT, '--python', sys.executable, *args],
                          capture_output=True, text=True, timeout=600,
                          cwd=ROOT)


def test_dry_run_checks_imports_and_configs(tmp_path):
    proc = run('--dry-run', '--out', str(tmp_path / 'gc'))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert 'dry run ok: sections' in proc.stdout
    assert 'dry run ok (arguments, imports, configs)' in proc.stdout


@pytest.mark.parametrize('args, message', [
    (['--bogus'], 'unknown argument: --bogus'),
    (['--iters', '0'], '--iters must be a positive integer'),
    (['--mmcv-src', '/nonexistent/mmcv.tar.gz'],
     "--mmcv-src /nonexistent/mmcv.tar.gz: no such file"),
    (['--wheels', '/nonexistent'], '--wheels /nonexistent: no such folder'),
])
def test_bad_arguments_are_refused(args, message, tmp_path):
    proc = run('--dry-run', '--out', str(tmp_path / 'gc'), *args)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_without_a_gpu_the_real_run_stops_with_a_clear_line(tmp_path):
    import torch
    if torch.cuda.is_available():
        pytest.skip('this machine has a GPU')
    proc = run('--out', str(tmp_path / 'gc'), '--skip-tests')
    assert proc.returncode == 2
    assert 'torch sees no CUDA device; use --dry-run' in proc.stderr
