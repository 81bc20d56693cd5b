"""models/utils/torch_compat.py: each helper on a recent torch (the API it
wraps) and on an older one (the API taken away or the version set back),
so that the torch 2.1 branch is exercised on every machine."""
import pytest
import torch

from embedmask_mmdet.models.utils import torch_compat as tc


def test_torch_version_parses_local_and_dev_builds():
    assert tc.torch_version('2.1.2+cu121') == (2, 1)
    assert tc.torch_version('2.13.0+cpu') == (2, 13)
    assert tc.torch_version('2.6.0a0+git1234') == (2, 6)
    assert tc.torch_version() == tuple(
        int(v) for v in torch.__version__.split('+')[0].split('.')[:2])


@pytest.mark.parametrize('takes_device', [True, False])
def test_autocast_enabled_and_dtype_on_both_apis(monkeypatch, takes_device):
    if takes_device and tc.torch_version() < (2, 4):
        pytest.skip('is_autocast_enabled(device_type) needs torch >= 2.4')
    if not takes_device:
        # torch < 2.4: no device argument; CPU state in *_cpu_* functions
        monkeypatch.setattr(tc, '_AUTOCAST_TAKES_DEVICE', False)
    assert not tc.autocast_enabled('cpu')
    assert not tc.autocast_enabled('cuda')
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert tc.autocast_enabled('cpu')
        assert not tc.autocast_enabled('cuda')
        assert tc.autocast_dtype('cpu') == torch.bfloat16
    assert not tc.autocast_enabled('cpu')
    # a device type torch has no query for on an old torch: off
    if not takes_device:
        assert tc.autocast_enabled('nodevice') is False


def test_is_exporting_with_and_without_torch_compiler_flag(monkeypatch):
    if tc._is_exporting is not None:
        assert tc.is_exporting() is False
        # under torch.export (recent torch): True inside the traced code
        seen = []

        class Probe(torch.nn.Module):
            def forward(self, x):
                seen.append(tc.is_exporting())
                return x + 1

        torch.export.export(Probe(), (torch.zeros(2),))
        assert seen and all(seen)
    # torch < 2.6: no torch.compiler.is_exporting; the TorchScript ONNX
    # exporter's flag stands in, False in eager code and under compile
    monkeypatch.setattr(tc, '_is_exporting', None)
    assert tc.is_exporting() is False
    monkeypatch.setattr(torch.onnx, 'is_in_onnx_export', lambda: True)
    assert tc.is_exporting() is True


def test_custom_op_falls_back_to_the_plain_function(monkeypatch):
    monkeypatch.delattr(torch.library, 'custom_op', raising=False)

    @tc.custom_op('embedmask_test::twice', mutates_args=())
    def twice(x: torch.Tensor) -> torch.Tensor:
        return 2 * x

    @twice.register_fake
    def _fake(x):
        return torch.empty_like(x)

    assert _fake is not None
    assert torch.equal(twice(torch.ones(2)), torch.full((2,), 2.))
    assert not hasattr(torch.ops.embedmask_test, 'twice')


def test_export_torch_problem_names_both_versions(monkeypatch):
    need = '.'.join(map(str, tc.EXPORT_MIN_TORCH))
    assert tc.export_torch_problem(need + '.0') is None
    assert tc.export_torch_problem('2.13.0+cpu') is None
    msg = tc.export_torch_problem('2.1.2+cu121')
    assert '\n' not in msg
    assert f'torch >= {need}' in msg and 'torch 2.1.2+cu121' in msg
    monkeypatch.setattr(torch, '__version__', '2.5.1')
    assert 'this is torch 2.5.1' in tc.export_torch_problem()
