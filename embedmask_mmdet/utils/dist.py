"""Config loading shared by tools/train.py and tools/test.py, and
multi-process training and testing on machines without CUDA."""
import datetime
import os.path as osp
import sys

import torch
import torch.distributed as dist
from mmengine.config import Config


def load_tool_config(args) -> Config:
    """The config of ``args.config`` with ``--cfg-options``, ``--launcher``
    and ``--work-dir`` applied (default work dir: work_dirs/<config name>)."""
    if not osp.isfile(args.config):
        sys.exit(f'error: config file {args.config!r} not found')
    cfg = Config.fromfile(args.config)
    cfg.launcher = args.launcher
    if args.cfg_options is not None:
        cfg.merge_from_dict(args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir') is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    return cfg


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


def finish_distributed() -> None:
    """Ends a distributed job cleanly: every rank waits for the others (rank
    0 may still be writing the last checkpoint), then the process group is
    destroyed. A rank that simply exits while gloo's threads still run dies
    with 'terminate called without an active exception' (SIGABRT), and
    torchrun reports the whole job as failed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
