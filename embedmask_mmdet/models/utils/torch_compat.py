"""The one place where the library bridges torch versions.

Training, testing and inference are supported on torch 2.1 - 2.13 (2.1 is
mmdet 3.3's usual environment: OpenMMLab's prebuilt mmcv 2.1.0 stops
there); ONNX export needs torch >= ``EXPORT_MIN_TORCH``. Each helper calls
the newer torch API where it exists and its older equivalent otherwise, so
nothing changes on a recent torch. The module imports only torch, so that
``models`` (and ``deploy`` above it) may use it.
"""
from typing import Callable, Optional, Tuple

import torch

__all__ = [
    'EXPORT_MIN_TORCH', 'autocast_dtype', 'autocast_enabled', 'custom_op',
    'export_torch_problem', 'is_exporting', 'torch_version'
]

#: the oldest torch whose ONNX export path (``torch.onnx.export(dynamo=True,
#: custom_translation_table=...)``, ``torch.library.custom_op`` with an
#: unbacked fake size, ``torch.compiler.is_exporting``) deploy/export.py uses
EXPORT_MIN_TORCH = (2, 7)  # 2.6.0: export tests fail (unbacked-size slice in graph.py nms)


def torch_version(version: Optional[str] = None) -> Tuple[int, int]:
    """(major, minor) of ``version`` (default: the installed
    ``torch.__version__``), e.g. (2, 1) for '2.1.2+cu121'."""
    version = torch.__version__ if version is None else version
    major, minor = str(version).split('+')[0].split('.')[:2]
    return int(major), int(''.join(c for c in minor if c.isdigit()) or 0)


# torch.is_autocast_enabled(device_type) exists since torch 2.4; before, the
# call took no argument (CUDA) and the CPU had torch.is_autocast_cpu_enabled
_AUTOCAST_TAKES_DEVICE = torch_version() >= (2, 4)


def autocast_enabled(device_type: str) -> bool:
    """``torch.is_autocast_enabled(device_type)`` on every torch.

    Args:
        device_type (str): 'cpu', 'cuda', ... (a tensor's ``device.type``).

    Returns:
        bool: Whether autocast is on for that device type here.
    """
    if _AUTOCAST_TAKES_DEVICE:
        return torch.is_autocast_enabled(device_type)
    if device_type == 'cuda':
        return torch.is_autocast_enabled()
    # torch < 2.4: is_autocast_cpu_enabled, is_autocast_xpu_enabled, ...
    query = getattr(torch, f'is_autocast_{device_type}_enabled', None)
    return bool(query()) if query is not None else False


def autocast_dtype(device_type: str) -> torch.dtype:
    """``torch.get_autocast_dtype(device_type)`` (torch >= 2.4) on every
    torch: the dtype autocast casts to on that device type."""
    if _AUTOCAST_TAKES_DEVICE:
        return torch.get_autocast_dtype(device_type)
    if device_type == 'cuda':
        return torch.get_autocast_gpu_dtype()
    return getattr(torch, f'get_autocast_{device_type}_dtype')()


_is_exporting = getattr(getattr(torch, 'compiler', None), 'is_exporting',
                        None)  # torch >= 2.6


def is_exporting() -> bool:
    """``torch.compiler.is_exporting()`` (torch >= 2.6): True while
    ``torch.export`` traces the model. Older torch has no such flag; there it
    is True only under the TorchScript ONNX exporter
    (``torch.onnx.is_in_onnx_export``), which this package does not use (and
    ``export_onnx`` refuses torch < ``EXPORT_MIN_TORCH``), so eager, training
    and ``torch.compile`` code paths stay the ones of a recent torch."""
    if _is_exporting is not None:
        return _is_exporting()
    return torch.onnx.is_in_onnx_export()


def export_torch_problem(version: Optional[str] = None) -> Optional[str]:
    """None when the installed torch (or ``version``) can run the ONNX
    export, else the one-line reason."""
    version = torch.__version__ if version is None else version
    if torch_version(version) >= EXPORT_MIN_TORCH:
        return None
    need = '.'.join(map(str, EXPORT_MIN_TORCH))
    return (f'ONNX export needs torch >= {need} (its dynamo exporter with '
            f'custom_translation_table), this is torch {version}; training, '
            'testing and inference work on torch >= 2.1')


def custom_op(name: str, mutates_args=()) -> Callable:
    """``torch.library.custom_op`` (torch >= 2.4) as a decorator. On an older
    torch the function stays a plain Python function (it runs eagerly the
    same way) and its ``register_fake`` is a no-op: only export needs the op
    and its fake, and export refuses that torch."""
    real = getattr(torch.library, 'custom_op', None)
    if real is not None:
        return real(name, mutates_args=mutates_args)

    def plain(fn: Callable) -> Callable:
        fn.register_fake = lambda fake: fake
        return fn

    return plain
