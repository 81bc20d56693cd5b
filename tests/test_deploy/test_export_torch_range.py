"""ONNX export refuses a torch older than the one its exporter needs, with
one line that names both (the API and the tool); fast, no model built."""
import importlib.util
import os.path as osp

import pytest
import torch

from embedmask_mmdet.deploy import ExportError, export_onnx
from embedmask_mmdet.models.utils.torch_compat import EXPORT_MIN_TORCH

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT, 'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')
NEED = '.'.join(map(str, EXPORT_MIN_TORCH))
OLD = f'{EXPORT_MIN_TORCH[0]}.{EXPORT_MIN_TORCH[1] - 1}.1+cu121'


def load_export_tool():
    spec = importlib.util.spec_from_file_location(
        'embedmask_tools_export_onnx',
        osp.join(ROOT, 'tools/deployment/export_onnx.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_onnx_refuses_an_older_torch(monkeypatch, tmp_path):
    monkeypatch.setattr(torch, '__version__', OLD)
    with pytest.raises(ExportError) as exc:
        export_onnx(CONFIG, str(tmp_path / 'missing.pth'),
                    str(tmp_path / 'model.onnx'))
    msg = str(exc.value)
    assert '\n' not in msg
    assert f'needs torch >= {NEED}' in msg and f'this is torch {OLD}' in msg
    assert not (tmp_path / 'model.onnx').exists()


def test_export_tool_refuses_an_older_torch_in_one_line(monkeypatch,
                                                        tmp_path, capsys):
    tool = load_export_tool()
    monkeypatch.setattr(torch, '__version__', OLD)
    with pytest.raises(SystemExit) as exc:
        # refused before the config or the checkpoint is looked at
        tool.main([CONFIG, str(tmp_path / 'missing.pth'),
                   '--out', str(tmp_path / 'model.onnx')])
    msg = str(exc.value.code)
    assert msg.startswith('error: ONNX export needs torch >= ') and \
        '\n' not in msg, msg
    assert OLD in msg


def test_installed_torch_is_refused_exactly_when_too_old(tmp_path):
    with pytest.raises(ExportError) as exc:
        export_onnx(CONFIG, str(tmp_path / 'missing.pth'),
                    str(tmp_path / 'model.onnx'))
    too_old = tuple(int(v) for v in torch.__version__.split('+')[0]
                    .split('.')[:2]) < EXPORT_MIN_TORCH
    # a supported torch gets past the check to the missing checkpoint
    assert ('needs torch >=' in str(exc.value)) == too_old
    assert ('checkpoint file' in str(exc.value)) == (not too_old)
