"""The PNG plots of docs/benchmarks.md, drawn from one run's results."""
import os.path as osp
import textwrap
from typing import Optional

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402

from .models import BOX_ONLY, LABELS  # noqa: E402

PLOTS = dict(latency='bench_latency.png', postproc='bench_postproc.png',
             train='bench_train_memory.png', accuracy='bench_accuracy.png')


def model_label(name: str) -> str:
    return LABELS.get(name, name)


def plot_name(kind: str, device: str) -> str:
    base, ext = osp.splitext(PLOTS[kind])
    return PLOTS[kind] if device == 'cpu' else f'{base}_{device}{ext}'


def plot_latency(speed: dict, path: str, device: str) -> None:
    sizes = list(speed['latency'])
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4.2),
                             squeeze=False)
    for ax, size in zip(axes[0], sizes):
        rows = speed['latency'][size]
        names = list(rows)
        med = [rows[m]['median_ms'] for m in names]
        p90 = [rows[m]['p90_ms'] - rows[m]['median_ms'] for m in names]
        colors = ['tab:red' if m == 'embedmask' else
                  'tab:gray' if m in BOX_ONLY else 'tab:blue' for m in names]
        bars = ax.bar(range(len(names)), med, yerr=[[0] * len(names), p90],
                      color=colors, capsize=4)
        for bar, v in zip(bars, med):
            ax.annotate(f'{v:.0f}', (bar.get_x() + bar.get_width() / 2, v),
                        ha='center', va='bottom', fontsize=8,
                        xytext=(0, 2), textcoords='offset points')
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([model_label(m) for m in names], rotation=25,
                           ha='right', fontsize=8)
        ax.set_ylabel('ms per image (median; whisker: p90)')
        counts = {rows[m].get('dets') for m in names}
        dets = f'{counts.pop()} detections each' if len(counts) == 1 \
            else 'detection counts differ'
        ax.set_title(f'{device.upper()} inference at {size}, {dets}')
        ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_postproc(pp: dict, e2e_ms: Optional[float], path: str,
                  device: str) -> None:
    dets = sorted(pp['total'])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for part, style in (('total', 'o-'), ('mask_probability', 's--'),
                        ('paste_masks', '^--')):
        ax.plot(dets, [pp[part][n]['median_ms'] for n in dets], style,
                label=part if part != 'total' else 'mask head predict (total)')
    fit = pp['fit']
    if fit['slope'] == fit['slope']:
        xs = [0, max(dets)]
        ax.plot(xs, [fit['intercept'] + fit['slope'] * x for x in xs], ':',
                color='k', label=f'fit {fit["intercept"]:.3g} + '
                f'{fit["slope"]:.3g}·N ms (R²={fit["r2"]:.4f})')
    if e2e_ms:
        ax.axhline(0.1 * e2e_ms, color='tab:red', lw=1,
                   label=f'10 % of EmbedMask end-to-end ({0.1 * e2e_ms:.3g} ms)')
    ax.set_xlabel('detections N')
    ax.set_ylabel('ms (median)')
    ax.set_title(f'EmbedMask mask post-processing, {device.upper()}, '
                 f'{pp["size"]}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_train(speed: dict, path: str, device: str) -> None:
    ts = speed['train_step']['models']
    mem = speed.get('memory', {}).get('train', {})
    names = list(ts)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    key = 'cuda_peak_mb' if device == 'cuda' else 'peak_rss_mb'
    for ax, vals, ylabel in (
            (axes[0], [ts[m]['median_ms'] / 1e3 for m in names],
             's per step (median)'),
            (axes[1], [mem.get(m, {}).get(key, 0) for m in names],
             'peak memory, MiB (' + ('CUDA allocated' if device == 'cuda'
                                     else 'process RSS') + ')')):
        colors = ['tab:red' if m == 'embedmask' else 'tab:blue'
                  for m in names]
        bars = ax.bar(range(len(names)), vals, color=colors)
        for bar, v in zip(bars, vals):
            ax.annotate(f'{v:.2f}' if v < 10 else f'{v:.0f}',
                        (bar.get_x() + bar.get_width() / 2, v), ha='center',
                        va='bottom', fontsize=8, xytext=(0, 2),
                        textcoords='offset points')
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels([model_label(m) for m in names], rotation=25,
                           ha='right', fontsize=8)
        ax.set_ylabel(ylabel)
        ax.grid(axis='y', alpha=0.3)
    size = speed['train_step']['size']
    fig.suptitle(f'{device.upper()} training step, batch '
                 f'{speed["train_step"]["batch"]} at {size}')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(acc: dict, path: str) -> None:
    names = [m for m, r in acc['models'].items() if r]
    keys = [('segm', 'mAP', 'segm AP'), ('segm', 'mAP_50', 'segm AP50'),
            ('segm', 'mAP_75', 'segm AP75'), ('bbox', 'mAP', 'bbox AP')]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    width = 0.8 / len(keys)
    drawn = 0
    for k, (task, key, label) in enumerate(keys):
        pos, vals = [], []
        for i, m in enumerate(names):
            v = (acc['models'][m].get(task) or {}).get(key)
            if m == 'embedmask_boxonly' and task == 'segm':
                continue  # its masks are untrained
            if v is not None:  # SOLOv2 has no boxes
                pos.append(i + (k - 1.5) * width)
                vals.append(100 * v)
        drawn += len(vals)
        bars = ax.bar(pos, vals, width, label=label, color=f'C{k}')
        for bar, v in zip(bars, vals):
            ax.annotate(f'{v:.1f}', (bar.get_x() + bar.get_width() / 2, v),
                        ha='center', va='bottom', fontsize=7,
                        xytext=(0, 1), textcoords='offset points')
    if not drawn:
        ax.text(0.5, 0.5, 'no detections: AP not computed', ha='center',
                transform=ax.transAxes)
    # room above the bars for a one-row legend
    ax.set_ylim(bottom=0, top=max(ax.get_ylim()[1] * 1.3, 1))
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([textwrap.fill(model_label(m), 16) for m in names],
                       fontsize=8)
    ax.set_ylabel('COCO AP (%) on the synthetic val split')
    ax.set_title(f'Equal budget: {acc["iters"]} iterations, same backbone, '
                 'data, optimizer, schedule')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8, ncol=len(keys), loc='upper center')
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
