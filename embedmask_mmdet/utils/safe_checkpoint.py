"""Make mmengine checkpoints loadable under torch's ``weights_only`` loader.

Since torch 2.6, ``torch.load`` defaults to ``weights_only=True``: the
unpickler only resolves an allowlist of globals. mmengine 0.10.x calls
``torch.load(filename, map_location=...)`` without ``weights_only`` (see
``mmengine.runner.checkpoint.load_from_local``), so every checkpoint written
by the Runner (``resume``, ``load_from``, mmdet's ``tools/test.py``,
``DetInferencer``) is refused, because its ``message_hub`` state pickles
``HistoryBuffer`` objects (holding numpy arrays, and the statistics methods
``HistoryBuffer.min`` etc., which pickle protocol 2 encodes as
``builtins.getattr(HistoryBuffer, 'min')``) and the runtime info may hold
numpy scalars.

This module allowlists exactly those globals, keeping the safe loader: any
other global (a custom class, ``os.system``, ...) is still refused with
``pickle.UnpicklingError``. ``builtins.getattr`` is *not* allowlisted; the
name is mapped to :func:`_history_buffer_getattr`, which only resolves public
methods of ``HistoryBuffer``.
"""
import pickle
from typing import Any, Callable, List, Tuple, Union

import numpy as np
import torch

_SafeGlobal = Union[Callable, Tuple[Callable, str]]

_INSTALLED = False


def _torch_version() -> Tuple[int, int]:
    major, minor = torch.__version__.split('+')[0].split('.')[:2]
    return int(major), int(''.join(c for c in minor if c.isdigit()) or 0)


def _history_buffer_getattr(obj: Any, name: str) -> Callable:
    """Stand-in for ``builtins.getattr`` in ``weights_only`` unpickling.

    Only resolves public plain functions defined on ``HistoryBuffer`` (or a
    subclass), i.e. the ``statistics_methods`` that ``HistoryBuffer``
    pickles. Anything else raises ``pickle.UnpicklingError``.
    """
    import inspect

    from mmengine.logging import HistoryBuffer
    if (isinstance(obj, type) and issubclass(obj, HistoryBuffer)
            and isinstance(name, str) and not name.startswith('_')):
        try:
            attr = inspect.getattr_static(obj, name)
        except AttributeError:
            attr = None
        if inspect.isfunction(attr):
            return attr
    raise pickle.UnpicklingError(
        f'weights_only load: refusing getattr({obj!r}, {name!r}); only '
        'public methods of mmengine HistoryBuffer may be resolved.')


def _numpy_multiarray():
    try:  # numpy >= 2.0
        from numpy._core import multiarray
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray
    return multiarray


def _numpy_dtype_classes() -> List[type]:
    """Classes of numpy's builtin dtypes (``type(np.dtype('f8'))`` ...)."""
    names = [
        'BoolDType', 'Int8DType', 'UInt8DType', 'Int16DType', 'UInt16DType',
        'Int32DType', 'UInt32DType', 'Int64DType', 'UInt64DType',
        'ByteDType', 'UByteDType', 'ShortDType', 'UShortDType', 'IntDType',
        'UIntDType', 'LongDType', 'ULongDType', 'LongLongDType',
        'ULongLongDType', 'Float16DType', 'Float32DType', 'Float64DType',
        'LongDoubleDType', 'Complex64DType', 'Complex128DType',
        'CLongDoubleDType', 'ObjectDType', 'BytesDType', 'StrDType',
        'VoidDType', 'DateTime64DType', 'TimeDelta64DType'
    ]
    try:  # numpy >= 1.25
        import numpy.dtypes as np_dtypes
        classes = [getattr(np_dtypes, n) for n in names
                   if hasattr(np_dtypes, n)]
    except ImportError:  # older numpy: dtype[float64] etc.
        classes = [type(np.dtype(t)) for t in set(np.sctypeDict.values())]
    out: List[type] = []
    for cls in classes:
        if (isinstance(cls, type) and issubclass(cls, np.dtype)
                and cls is not np.dtype and cls not in out):
            out.append(cls)
    return out


def mmengine_checkpoint_safe_globals() -> List[_SafeGlobal]:
    """The exact globals allowlisted by
    :func:`allow_mmengine_checkpoint_globals`.

    - ``mmengine.logging.history_buffer.HistoryBuffer``
    - ``builtins.getattr`` -> :func:`_history_buffer_getattr` (torch >= 2.6)
    - ``numpy.ndarray``, ``numpy.dtype``
    - ``numpy._core.multiarray._reconstruct`` and its numpy 1.x name
      ``numpy.core.multiarray._reconstruct`` (torch >= 2.6)
    - ``numpy._core.multiarray.scalar`` / ``numpy.core.multiarray.scalar``
    - the builtin dtype classes ``numpy.dtypes.{Bool,Int8..Int64,UInt8..
      UInt64,Byte,UByte,Short,UShort,Int,UInt,Long,ULong,LongLong,
      ULongLong,Float16,Float32,Float64,LongDouble,Complex64,Complex128,
      CLongDouble,Object,Bytes,Str,Void,DateTime64,TimeDelta64}DType``
      (needed by the BUILD opcode of unpickled dtypes).

    ``collections.OrderedDict``/``Counter`` and ``_codecs.encode`` are
    already allowed by torch. The ``(callable, 'full.path')`` form (torch >=
    2.6) registers both numpy 1.x and 2.x module paths, so checkpoints
    written with either numpy load with the other.
    """
    from mmengine.logging import HistoryBuffer
    multiarray = _numpy_multiarray()
    reconstruct, scalar = multiarray._reconstruct, multiarray.scalar
    plain: List[_SafeGlobal] = [HistoryBuffer, np.ndarray, np.dtype]
    plain += _numpy_dtype_classes()
    if _torch_version() < (2, 6):
        # No (callable, name) tuples before torch 2.6 (weights_only is not
        # the default there anyway): register under the functions' own names.
        return plain + [reconstruct, scalar]
    named: List[_SafeGlobal] = [(_history_buffer_getattr, 'builtins.getattr')]
    for mod in ('numpy._core.multiarray', 'numpy.core.multiarray'):
        named += [(reconstruct, f'{mod}._reconstruct'),
                  (scalar, f'{mod}.scalar')]
    return plain + named


def _wrap_local_loader() -> None:
    """Make mmengine's local checkpoint loader name the file on refusal."""
    from mmengine.runner.checkpoint import CheckpointLoader, load_from_local

    if getattr(CheckpointLoader._schemes.get(''), '_embedmask_wrapped',
               False):
        return

    def load_from_local_safe(filename, map_location):
        try:
            return load_from_local(filename, map_location)
        except pickle.UnpicklingError as e:
            raise pickle.UnpicklingError(
                f'Refusing to load checkpoint {filename!r}: it contains a '
                'global that is not allowlisted for torch.load(weights_only='
                'True). If you trust this file, allowlist that global with '
                'torch.serialization.add_safe_globals([...]) or the '
                'torch.serialization.safe_globals([...]) context manager, or '
                'load it yourself with torch.load(..., weights_only=False) '
                f'knowingly. torch said: {e}') from e

    load_from_local_safe._embedmask_wrapped = True
    CheckpointLoader.register_scheme(
        prefixes='', loader=load_from_local_safe, force=True)


def allow_mmengine_checkpoint_globals() -> None:
    """Allowlist the globals mmengine Runner checkpoints need (idempotent).

    torch >= 2.6 loads with ``weights_only=True`` by default and mmengine
    0.10.x does not pass ``weights_only``, so Runner checkpoints fail with
    "Unsupported global ... HistoryBuffer". This registers exactly
    :func:`mmengine_checkpoint_safe_globals` via
    ``torch.serialization.add_safe_globals`` (the safe loader stays on;
    arbitrary objects are still refused) and makes mmengine's local loader
    report the refused file by name.
    """
    global _INSTALLED
    if _INSTALLED:
        return
    add_safe_globals = getattr(torch.serialization, 'add_safe_globals', None)
    if add_safe_globals is not None:  # torch >= 2.4
        add_safe_globals(mmengine_checkpoint_safe_globals())
    _wrap_local_loader()
    _INSTALLED = True
