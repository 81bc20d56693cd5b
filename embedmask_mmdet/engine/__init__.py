from .atomic_checkpoint_hook import (AtomicCheckpointHook, checkpoint_problem,
                                     find_resume_checkpoint)

__all__ = [
    'AtomicCheckpointHook', 'checkpoint_problem', 'find_resume_checkpoint'
]
