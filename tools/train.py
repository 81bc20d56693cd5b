"""Train an EmbedMask (or any mmdet) model; the flags are mmdet's tools/train.py's.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]] [--amp]
        [--auto-scale-lr] [--cfg-options k=v ...] [--launcher pytorch]
"""
import argparse
import os
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from embedmask_mmdet.engine import enable_amp
from embedmask_mmdet.utils.dist import (finish_distributed, load_tool_config,
                                        setup_cpu_distributed)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--amp', action='store_true',
        help='automatic mixed precision: fp16 + loss scaling on a GPU '
        '(mmengine AmpOptimWrapper), bf16 autocast on a CPU '
        '(embedmask_mmdet CpuAmpOptimWrapper)')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the LR by the real batch size')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CKPT, or without a value from the latest '
        'checkpoint in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def build_cfg(args) -> Config:
    cfg = load_tool_config(args)
    if args.amp:
        # CpuAmpOptimWrapper: mmengine's AmpOptimWrapper on a GPU, bf16
        # autocast on a CPU (AmpOptimWrapper itself refuses CPUs)
        try:
            enable_amp(cfg)
        except ValueError as e:
            sys.exit(f'error: {e}')
    if args.auto_scale_lr:
        if 'base_batch_size' not in cfg.get('auto_scale_lr', {}):
            sys.exit('error: --auto-scale-lr needs auto_scale_lr.base_batch_size '
                     'in the config')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif args.resume is not None:
        if not osp.isfile(args.resume):
            sys.exit(f'error: --resume checkpoint {args.resume!r} not found')
        cfg.resume = True
        cfg.load_from = args.resume
    return cfg


def main(argv=None):
    cfg = build_cfg(parse_args(argv))
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg \
        else RUNNERS.build(cfg)
    runner.train()
    finish_distributed()


if __name__ == '__main__':
    main()
