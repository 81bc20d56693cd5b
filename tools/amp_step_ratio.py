"""Time a training step of a config in fp32 and under --amp, same process.

    python tools/amp_step_ratio.py [CONFIG] [--batch 4] [--size 320]
        [--warmup 3] [--reps 8]

Builds CONFIG's model (default: the CPU config, ResNet-18 EmbedMask), takes
one batch of the built-in synthetic dataset (generated into a temporary
directory) through the config's train pipeline, and times mmengine's
``model.train_step`` (data preprocessing, forward, losses, backward, gradient
clipping, AdamW step) with the config's ``OptimWrapper`` and with what
``tools/train.py --amp`` makes of it (``CpuAmpOptimWrapper``: bf16 autocast
on a CPU). The two alternate step by step (round-robin), so that other load
on the machine hits both alike. Prints the CPU, its bf16 flags, the step
times and the ratios amp / fp32 of the median and the fastest step (< 1:
--amp is faster).
"""
import argparse
import copy
import os.path as osp
import platform
import tempfile

import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CPU_CONFIG = osp.join(ROOT,
                      'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')


def cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def bf16_flags() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            flags = next((line.split(':', 1)[1].split() for line in f
                          if line.startswith('flags')), [])
    except OSError:
        return 'unknown'
    return ', '.join(f'{name} {"yes" if name in flags else "no"}'
                     for name in ('avx512_bf16', 'amx_bf16', 'amx_tile'))


def one_batch(cfg, data_root: str, batch: int, size: int) -> dict:
    from mmengine.runner import Runner

    from embedmask_mmdet.datasets import generate_synthetic_coco
    generate_synthetic_coco(data_root, num_train=batch, num_val=0, seed=0,
                            size=(size, size), logger='silent')
    loader = copy.deepcopy(cfg.train_dataloader)
    loader.update(batch_size=batch, num_workers=0, persistent_workers=False,
                  sampler=dict(type='DefaultSampler', shuffle=False))
    loader.dataset.data_root = data_root
    for step in loader.dataset.pipeline:
        if step['type'] == 'Resize':
            step['scale'] = (size, size)
    return next(iter(Runner.build_dataloader(loader, seed=0)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', nargs='?', default=CPU_CONFIG)
    parser.add_argument('--batch', type=int, default=4)
    parser.add_argument('--size', type=int, default=320)
    parser.add_argument('--warmup', type=int, default=3)
    parser.add_argument('--reps', type=int, default=8)
    args = parser.parse_args(argv)

    from mmengine.config import Config
    from mmengine.device import get_device
    from mmengine.optim import build_optim_wrapper

    from analysis_tools.benchmark.measure import (interleave, register,
                                                   summarize)
    from embedmask_mmdet.engine import enable_amp
    register()
    from mmdet.registry import MODELS

    cfg = Config.fromfile(args.config)
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    device = get_device()
    model.to(device)
    model.train()
    amp_cfg = copy.deepcopy(cfg)
    enable_amp(amp_cfg)
    wrappers = dict(fp32=build_optim_wrapper(model, cfg.optim_wrapper),
                    amp=build_optim_wrapper(model, amp_cfg.optim_wrapper))
    with tempfile.TemporaryDirectory() as tmp:
        data = one_batch(cfg, osp.join(tmp, 'data') + '/', args.batch,
                         args.size)

    losses = {}

    def stepper(name):
        def step():
            log_vars = model.train_step(data, wrappers[name])
            losses[name] = float(log_vars['loss'].detach())
        return step

    times = interleave({name: stepper(name) for name in wrappers},
                       warmup=args.warmup, reps=args.reps, device=device)
    stats = {name: summarize(t) for name, t in times.items()}
    amp = wrappers['amp']
    print(f'device: {device}; CPU: {cpu_model()} ({bf16_flags()}); '
          f'torch {torch.__version__}, '
          f'{torch.get_num_threads()} threads, capability '
          f'{torch.backends.cpu.get_cpu_capability()}')
    print(f'{osp.relpath(args.config, ROOT)}: batch {args.batch}, '
          f'{args.size}x{args.size}, {args.warmup} warm-up + {args.reps} '
          f'timed steps each, alternating')
    for name, s in stats.items():
        label = 'fp32' if name == 'fp32' else \
            f'amp ({type(amp).__name__}, {amp.cast_dtype})'
        print(f'  {label:<45} median {s["median_ms"]:8.1f} ms  '
              f'min {s["min_ms"]:8.1f}  p90 {s["p90_ms"]:8.1f}  '
              f'(last loss {losses[name]:.3f})')
    ratio = {k: stats['amp'][k] / stats['fp32'][k]
             for k in ('median_ms', 'min_ms')}
    print(f'ratio amp / fp32: {ratio["median_ms"]:.2f} (median step), '
          f'{ratio["min_ms"]:.2f} (fastest step)')


if __name__ == '__main__':
    main()
