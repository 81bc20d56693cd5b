"""Multi-process training and testing on machines without CUDA."""
import datetime
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config


def setup_cpu_distributed(cfg: Config) -> None:
    """Make ``--launcher pytorch`` work without CUDA (gloo on CPU).

    mmengine 0.10 assumes one GPU per process: its ``init_dist`` calls
    ``torch.cuda.set_device`` (which raises on CPU-only torch builds), mmdet's
    default_runtime asks for nccl, and the Runner wraps the model in DDP with
    ``device_ids=[LOCAL_RANK]``, which torch refuses for a CPU module. Without
    CUDA, start the gloo process group here (the Runner then skips its own
    ``init_dist``) and wrap with ``device_ids=None``.
    """
    if cfg.launcher == 'none' or torch.cuda.is_available():
        return
    if cfg.launcher != 'pytorch':
        sys.exit(f'error: without CUDA only --launcher pytorch (gloo) is '
                 f'supported, got {cfg.launcher!r}')
    if cfg.get('env_cfg') is None:
        cfg.env_cfg = {}
    dist_cfg = dict(cfg.env_cfg.get('dist_cfg') or {}, backend='gloo')
    cfg.env_cfg.dist_cfg = dist_cfg
    if not dist.is_initialized():
        kwargs = {}
        if dist_cfg.get('timeout') is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
        dist.init_process_group(backend='gloo', **kwargs)
    wrapper = cfg.get('model_wrapper_cfg') or dict(
        type='MMDistributedDataParallel', broadcast_buffers=False,
        find_unused_parameters=cfg.get('find_unused_parameters', False))
    if wrapper.get('type', 'MMDistributedDataParallel') == \
            'MMDistributedDataParallel':
        wrapper['device_ids'] = None
    cfg.model_wrapper_cfg = wrapper
