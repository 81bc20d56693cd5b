"""Plot the training losses and learning rate of an mmengine work dir.

    python tools/plot_curves.py WORK_DIR [--out WORK_DIR/loss_curve.png]

Reads every WORK_DIR/*/vis_data/scalars.json (one per run, resumed runs
included) and draws each loss term and the total against the iteration.

mmdet's ``tools/analysis_tools/analyze_logs.py plot_curve
WORK_DIR/<run>/vis_data/scalars.json --keys loss`` plots our logs as well
(install the ``analysis`` extra: it needs seaborn). This tool exists for
``make demo``. A resumed training writes a new timestamped run folder each
time; this tool finds all of them, merges them in iteration order (later
runs win), and draws every loss term and the learning rate into one PNG,
from the work dir alone.
"""
import argparse
import glob
import json
import os.path as osp
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402


def load_scalars(work_dir: str):
    """Training records {iter: {key: value}} merged over runs, later runs win."""
    files = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    records = {}
    for path in files:
        with open(path) as f:
            for line in f:
                rec = json.loads(line)
                if 'loss' in rec and 'iter' in rec:
                    records[rec['iter']] = rec
    return [records[k] for k in sorted(records)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('work_dir')
    parser.add_argument('--out', help='PNG path (default WORK_DIR/loss_curve.png)')
    args = parser.parse_args(argv)
    records = load_scalars(args.work_dir)
    if not records:
        sys.exit(f'error: no training scalars under {args.work_dir}/*/vis_data/')
    iters = [r['iter'] for r in records]
    keys = sorted(k for k in records[-1] if k.startswith('loss'))
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                    gridspec_kw=dict(height_ratios=[3, 1]))
    for key in keys:
        ax.plot(iters, [r.get(key, float('nan')) for r in records],
                label=key, linewidth=2.2 if key == 'loss' else 1.2)
    ax.set_ylabel('loss')
    ax.set_title(f'training losses: {osp.basename(osp.normpath(args.work_dir))}')
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.plot(iters, [r.get('lr', float('nan')) for r in records], color='k')
    ax_lr.set_xlabel('iteration')
    ax_lr.set_ylabel('learning rate')
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    out = args.out or osp.join(args.work_dir, 'loss_curve.png')
    fig.savefig(out, dpi=100)
    print(f'loss curve ({len(records)} points, {len(keys)} terms) -> {out}')


if __name__ == '__main__':
    main()
