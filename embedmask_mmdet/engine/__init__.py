from .atomic_checkpoint_hook import (AtomicCheckpointHook, checkpoint_problem,
                                     find_resume_checkpoint)
from .cpu_amp_optim_wrapper import CpuAmpOptimWrapper, enable_amp

__all__ = [
    'AtomicCheckpointHook', 'checkpoint_problem', 'find_resume_checkpoint',
    'CpuAmpOptimWrapper', 'enable_amp'
]
