"""Peak memory of one model, measured in a process of its own.

Each measurement runs in a child forked from a multiprocessing forkserver
that has only imported torch, mmdet and this package, so a child's peak RSS
is that of a fresh process running one model (imports included) and is not
inflated by the models the benchmark process holds.
"""
import multiprocessing as mp
import queue as queue_mod
import time
import traceback

import torch

from . import measure
from .machine import peak_rss_mb

PRELOAD = ['analysis_tools.benchmark.worker']


def run_memory(spec: dict, queue) -> None:
    """Builds ``spec['model']`` and runs ``spec['steps']`` predictions
    (``mode='infer'``) or training steps (``mode='train'``), then reports
    peak RSS (CPU) / peak allocated memory (CUDA) in MiB."""
    try:
        if spec.get('threads'):
            torch.set_num_threads(spec['threads'])
        measure.register()
        device = spec['device']
        size = tuple(spec['size'])
        train = spec['mode'] == 'train'
        model = measure.build(spec['model'], spec['arch'], device,
                              spec.get('num_dets', 100), train=train)
        if train:
            fn = measure.train_stepper(model, size, device,
                                       num_classes=spec['num_classes'])
        else:
            fn = measure.predictor(spec['model'], model, size, device)[0]
        measure.sync(device)
        rss_built = measure.current_rss_mb()
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()
        for _ in range(spec.get('steps', 2)):
            fn()
        measure.sync(device)
        # VmHWM and VmRSS come from per-thread-cached counters that can
        # disagree by a few pages: the peak is at least any RSS read
        out = dict(peak_rss_mb=max(peak_rss_mb(),
                                   measure.current_rss_mb(), rss_built),
                   rss_built_mb=rss_built)
        if device.startswith('cuda'):
            out['cuda_peak_mb'] = torch.cuda.max_memory_allocated() / 2**20
        queue.put(out)
    except BaseException as e:  # reported to the parent, not swallowed
        queue.put(dict(error=f'{type(e).__name__}: {e}\n'
                       f'{traceback.format_exc()}'))


_CTX = None


def measure_memory(spec: dict, timeout: float = 3600.) -> dict:
    """Runs :func:`run_memory` in a fresh forked child and returns its dict."""
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context('forkserver')
        _CTX.set_forkserver_preload(PRELOAD)
    queue = _CTX.Queue()
    proc = _CTX.Process(target=run_memory, args=(spec, queue))
    proc.start()
    start = time.monotonic()
    try:
        while True:
            try:
                out = queue.get(timeout=1.)
                break
            except queue_mod.Empty:
                if not proc.is_alive() and queue.empty():
                    raise RuntimeError(
                        f'memory measurement {spec} died (exit code '
                        f'{proc.exitcode}; killed for memory?)')
                if time.monotonic() - start > timeout:
                    raise TimeoutError(f'memory measurement {spec} timed out')
    finally:
        proc.join(timeout=60)
        if proc.is_alive():
            proc.kill()
    if 'error' in out:
        raise RuntimeError(f'memory measurement {spec} failed:\n'
                           f'{out["error"]}')
    return out
