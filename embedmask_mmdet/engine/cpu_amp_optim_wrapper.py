"""Mixed-precision training that also runs on a CPU (``--amp`` anywhere).

mmengine's :class:`~mmengine.optim.AmpOptimWrapper` asserts at construction
that a GPU / NPU / MLU / MUSA is present, so ``tools/train.py --amp`` could not
train on a CPU. :class:`CpuAmpOptimWrapper` is a drop-in replacement:

- on an accelerator (``mmengine.device.get_device()`` is ``cuda``, ``npu``,
  ``mlu`` or ``musa``) it *is* ``AmpOptimWrapper``: its ``__init__``,
  ``backward``, ``step``, ``state_dict``, ``load_state_dict`` and
  ``optim_context`` run unchanged (fp16 autocast by default, GradScaler with
  ``loss_scale``);
- on a CPU the forward pass (``optim_context``, which mmengine's
  ``train_step`` enters around the data preprocessor and the forward/loss)
  runs under ``torch.autocast('cpu', dtype=dtype)``, ``dtype`` defaulting to
  ``bfloat16``. bf16 has float32's exponent range, so no loss scaling is
  needed: ``backward``, ``step`` and the state dict are plain
  ``OptimWrapper``'s (``loss_scale`` is ignored). ``dtype='float16'`` is
  accepted on a CPU too and then gets a CPU ``torch.amp.GradScaler`` built
  from ``loss_scale`` like ``AmpOptimWrapper``'s.

Parameters, gradients and optimizer state stay float32 on every device.
Checkpoints move between the two: a CPU bf16 state dict has no
``loss_scaler`` entry (``AmpOptimWrapper`` then keeps its fresh scaler), and a
GPU one's ``loss_scaler`` entry is dropped on a CPU without a scaler.

:func:`enable_amp` is what ``tools/train.py --amp`` does to a config.
"""
from contextlib import contextmanager
from typing import Optional, Union

import torch
import torch.nn as nn
from mmdet.registry import OPTIM_WRAPPERS as MMDET_OPTIM_WRAPPERS
from mmengine.device import get_device
from mmengine.optim import AmpOptimWrapper, OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS as MMENGINE_OPTIM_WRAPPERS

#: devices on which mmengine's AmpOptimWrapper works (and is used as is)
ACCELERATORS = ('cuda', 'npu', 'mlu', 'musa')
#: dtypes torch's CPU autocast runs in
CPU_DTYPES = ('bfloat16', 'float16')


def _as_dtype(dtype: Union[str, torch.dtype, None]) -> Optional[torch.dtype]:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None),
                                             torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(f'dtype must be a torch.dtype or its name, got {dtype!r}')


class CpuAmpOptimWrapper(AmpOptimWrapper):
    """``AmpOptimWrapper`` on accelerators, bf16 autocast on a CPU.

    Args:
        loss_scale (float | str | dict): ``AmpOptimWrapper``'s GradScaler
            setting. Used on accelerators, and on a CPU only with
            ``dtype='float16'``. Defaults to ``'dynamic'``.
        dtype (str | torch.dtype, optional): autocast dtype. ``None``: the
            accelerator's default (float16 on CUDA), ``bfloat16`` on a CPU.
            On a CPU only ``bfloat16`` and ``float16`` are accepted.
        use_fsdp (bool): ``AmpOptimWrapper``'s; on a CPU only without a
            scaler (bf16).
        **kwargs: ``OptimWrapper``'s (``optimizer``, ``clip_grad``,
            ``accumulative_counts``).
    """

    def __init__(self,
                 loss_scale: Union[str, float, dict] = 'dynamic',
                 dtype: Union[str, torch.dtype, None] = None,
                 use_fsdp: bool = False,
                 **kwargs):
        self.device_type = get_device()
        if self.device_type in ACCELERATORS:
            super().__init__(loss_scale=loss_scale, dtype=dtype,
                             use_fsdp=use_fsdp, **kwargs)
            return
        if self.device_type != 'cpu':
            raise RuntimeError(
                f'{type(self).__name__}: mixed precision on '
                f'{self.device_type!r} is not supported (only '
                f'{", ".join(ACCELERATORS)} and cpu)')
        dtype = _as_dtype(dtype) or torch.bfloat16
        if str(dtype).replace('torch.', '') not in CPU_DTYPES:
            raise ValueError(f'CPU autocast runs in {" or ".join(CPU_DTYPES)},'
                             f' got dtype={dtype}')
        if dtype == torch.float16 and not hasattr(torch.amp, 'GradScaler'):
            # torch < 2.3: CPU autocast is bf16 only, no CPU GradScaler (the
            # library's other torch guards: models/utils/torch_compat.py)
            raise ValueError(
                'float16 autocast on a CPU needs torch >= 2.3, this is torch '
                f'{torch.__version__}; use dtype="bfloat16" (the default)')
        OptimWrapper.__init__(self, **kwargs)
        self.cast_dtype = dtype
        self._scale_update_param = None
        self.loss_scaler = None
        if dtype == torch.float16:
            if use_fsdp:
                raise ValueError('use_fsdp with float16 on a CPU is not '
                                 'supported; use dtype="bfloat16"')
            self.loss_scaler = self._cpu_grad_scaler(loss_scale)

    def _cpu_grad_scaler(self, loss_scale) -> 'torch.amp.GradScaler':
        if loss_scale == 'dynamic':
            return torch.amp.GradScaler('cpu')
        if isinstance(loss_scale, float):
            self._scale_update_param = loss_scale
            return torch.amp.GradScaler('cpu', init_scale=loss_scale)
        if isinstance(loss_scale, dict):
            return torch.amp.GradScaler('cpu', **loss_scale)
        raise TypeError('loss_scale must be of type float, dict, or '
                        f'"dynamic", but got {loss_scale}')

    @property
    def _plain(self) -> bool:
        """True on a CPU without loss scaling (bf16): OptimWrapper's
        backward / step / state dict."""
        return self.device_type == 'cpu' and self.loss_scaler is None

    def backward(self, loss: torch.Tensor, **kwargs) -> None:
        if self._plain:
            OptimWrapper.backward(self, loss, **kwargs)
        else:
            super().backward(loss, **kwargs)

    def step(self, **kwargs) -> None:
        if self._plain:
            OptimWrapper.step(self, **kwargs)
        else:
            super().step(**kwargs)

    def state_dict(self) -> dict:
        if self._plain:
            return OptimWrapper.state_dict(self)
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if self._plain:
            # a GPU AMP checkpoint's scaler state has nothing to restore here
            state_dict.pop('loss_scaler', None)
            OptimWrapper.load_state_dict(self, state_dict)
        else:
            super().load_state_dict(state_dict)

    @contextmanager
    def optim_context(self, model: nn.Module):
        if self.device_type != 'cpu':
            with super().optim_context(model):
                yield
            return
        # OptimWrapper's context (no_sync during gradient accumulation), not
        # AmpOptimWrapper's: mmengine's autocast asserts bf16 on a CPU
        with OptimWrapper.optim_context(self, model), \
                torch.autocast('cpu', dtype=self.cast_dtype):
            yield


MMENGINE_OPTIM_WRAPPERS.register_module(module=CpuAmpOptimWrapper)
MMDET_OPTIM_WRAPPERS.register_module(module=CpuAmpOptimWrapper)

#: optim wrapper types that --amp switches to CpuAmpOptimWrapper
AMP_SWITCHABLE = ('OptimWrapper', 'AmpOptimWrapper', 'CpuAmpOptimWrapper')


def enable_amp(cfg) -> None:
    """Turn on mixed precision in ``cfg`` in place, as ``tools/train.py
    --amp`` does: ``optim_wrapper.type`` becomes ``'CpuAmpOptimWrapper'``
    (works on a CPU and on GPUs); the optimizer, ``clip_grad``,
    ``paramwise_cfg``, ``constructor`` and any ``dtype`` / ``loss_scale``
    already there are kept (``loss_scale`` defaults to ``'dynamic'``).

    Raises:
        ValueError: no ``optim_wrapper``, or one of another type (e.g. an
            ``OptimWrapperDict`` constructor or ``ApexOptimWrapper``).
    """
    wrapper = cfg.get('optim_wrapper')
    if wrapper is None:
        raise ValueError('--amp needs an optim_wrapper in the config')
    kind = wrapper.get('type', 'OptimWrapper')
    if isinstance(kind, type):
        kind = kind.__name__
    if kind not in AMP_SWITCHABLE:
        raise ValueError(f'--amp switches only optim_wrapper.type '
                         f'{" / ".join(AMP_SWITCHABLE)}, got {kind!r}')
    wrapper['type'] = 'CpuAmpOptimWrapper'
    wrapper.setdefault('loss_scale', 'dynamic')
