"""What every section of the study shares about where it runs: the
repository root, the one logger, the machine description printed beside
every figure, the CPU's peak-throughput estimate, and paths and command
lines as the generated page shows them (relative to the repository, so the
page never carries the checkout's location on the machine that ran it)."""
import datetime
import os
import os.path as osp
import platform
import resource
import shlex
import sys
import time

# this file is tools/analysis_tools/benchmark/machine.py
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.dirname(
    osp.abspath(__file__)))))


def log(msg: str) -> None:
    """The study's progress line (stdout, flushed: make bench is long)."""
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def repo_path(path: str) -> str:
    """``path`` as the page shows it: relative to the repository when it
    is inside it, else only its file name (never a machine's layout)."""
    full = osp.abspath(path)
    if full == ROOT or full.startswith(ROOT + os.sep):
        return osp.relpath(full, ROOT)
    return osp.basename(full)


def command_line(argv=None) -> str:
    """This process's command as the page shows it, paths made relative."""
    argv = sys.argv if argv is None else argv
    words = [repo_path(argv[0])] + [
        repo_path(a) if osp.isabs(a) and osp.exists(a) else a
        for a in argv[1:]]
    return 'python ' + ' '.join(shlex.quote(w) for w in words)


def size_text(size) -> str:
    """(height, width) -> 'HxW', the page's spelling of an input size."""
    return f'{size[0]}x{size[1]}'


def parse_size(text: str):
    """'HxW' -> (height, width); ValueError on anything else."""
    h, w = (int(v) for v in text.lower().split('x'))
    return h, w


def load_average() -> str:
    return ' '.join(f'{v:.2f}' for v in os.getloadavg())


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB: Linux's VmHWM, the high
    water mark of this process image. Not ru_maxrss: Linux carries that
    across fork and exec, so a child started by a large parent would report
    the parent's peak (measured: a child of an 800 MB parent, 811 MB
    against its own 11 MB). ru_maxrss (KiB) where /proc is missing."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024.
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.


def cpu_info() -> dict:
    """/proc/cpuinfo's model name, vendor, vector flags and highest clock."""
    with open('/proc/cpuinfo') as f:
        text = f.read()
    lines = text.splitlines()

    def first(key, default=''):
        return next((line.split(':', 1)[1].strip() for line in lines
                     if line.startswith(key)), default)

    mhz = [float(line.split(':')[1]) for line in lines
           if line.startswith('cpu MHz')]
    return dict(model=first('model name', 'unknown'),
                vendor='AMD' if 'AuthenticAMD' in text else 'Intel',
                flags=set(first('flags').split()),
                mhz=max(mhz) if mhz else 2000.)


def machine_info(devices=('cpu', )) -> dict:
    """The machine table printed beside every measured section."""
    import mmcv
    import mmdet
    import mmengine
    import torch
    with open('/proc/meminfo') as f:
        mem_gb = int(f.readline().split()[1]) / 2**20
    info = {
        'date (UTC)': datetime.datetime.now(datetime.timezone.utc).strftime(
            '%Y-%m-%d %H:%M'),
        'CPU': cpu_info()['model'],
        'logical cores (usable)': f'{os.cpu_count()} '
                                  f'({len(os.sched_getaffinity(0))})',
        'torch threads': torch.get_num_threads(),
        'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', 'unset'),
        'RAM': f'{mem_gb:.1f} GiB',
        'load average at start': load_average(),
        'python': platform.python_version(),
        'torch / mmcv / mmengine / mmdet': f'{torch.__version__} / '
        f'{mmcv.__version__} / {mmengine.__version__} / {mmdet.__version__}',
    }
    if 'cuda' in devices:
        info['GPU'] = torch.cuda.get_device_name(0)
        info['CUDA'] = torch.version.cuda
    return info


def peak_gflops() -> dict:
    """cores x clock x FLOPs/cycle (fp32 FMA lanes x 2 x FMA units; bf16
    dot-product units double it, AMX tiles ~1024 bf16 FLOPs/cycle/core;
    int8: 2 ops per multiply-add, AMX ~2048, VNNI 4x the fp32 lanes,
    plain AVX2 / AVX-512 (vpmaddubsw + vpmaddwd) ~2x)."""
    cpu = cpu_info()
    flags = cpu['flags']
    cores = len(os.sched_getaffinity(0))
    if 'avx512f' in flags:
        # Zen 4 executes 512-bit FMAs on two 256-bit pipes
        fp32 = 64 if cpu['vendor'] == 'Intel' else 32
    elif 'avx2' in flags and 'fma' in flags:
        fp32 = 32
    else:
        fp32 = 8
    bf16 = 1024 if 'amx_bf16' in flags else (
        2 * fp32 if 'avx512_bf16' in flags else None)
    int8_dot = 'amx_int8' in flags or 'avx512_vnni' in flags or \
        'avx_vnni' in flags
    int8 = 2048 if 'amx_int8' in flags else 4 * fp32 if int8_dot \
        else 2 * fp32
    clock = cpu['mhz'] / 1000
    return dict(cores=cores, clock_ghz=round(clock, 2), fp32_per_cycle=fp32,
                bf16_per_cycle=bf16, int8_per_cycle=int8,
                fp32=cores * clock * fp32,
                bf16=cores * clock * bf16 if bf16 else None,
                int8=cores * clock * int8, int8_dot_product=int8_dot,
                amx='amx_bf16' in flags, avx512_bf16='avx512_bf16' in flags)
