"""EmbedMask for MMDetection 3.x.

Importing this package registers its models, losses and datasets in mmdet's
registries and makes mmengine checkpoints loadable under torch's safe loader.
"""
__version__ = '0.1.0'

from . import datasets, models  # noqa: F401,E402
from . import engine  # noqa: F401,E402  (AtomicCheckpointHook)
from .utils import allow_mmengine_checkpoint_globals  # noqa: E402

allow_mmengine_checkpoint_globals()
