"""Test (and evaluate) a model; the flags are mmdet's tools/test.py's.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
        [--show-dir DIR] [--cfg-options k=v ...] [--launcher pytorch]
        [--amp] [--channels-last] [--tta]

``--amp`` tests under autocast (mmengine's TestLoop(fp16=True): bf16 on a
CPU, fp16 on a GPU); ``--channels-last`` keeps images and conv weights NHWC
(EmbedMask configs). Both are the fast CPU inference switches; mask
probabilities stay float32, so masks agree with fp32.

``--tta`` tests with test-time augmentation as mmdet's tools/test.py does:
the config's ``tta_model`` and ``tta_pipeline`` (our configs set them:
EmbedMaskTTAModel over flips and scales); without them, EmbedMask models
get EmbedMaskTTAModel (masks merged too) and other models mmdet's
DetTTAModel, over a horizontal flip of the test pipeline.

The metrics are also written to WORK_DIR/test_metrics.json.

COCO results files without evaluation (test-dev), as mmdet's tools/test.py:
``--cfg-options test_evaluator.format_only=True
test_evaluator.outfile_prefix=PREFIX`` (and the test dataloader and
evaluator pointed at the image-info file) writes PREFIX.bbox.json and
PREFIX.segm.json; nothing is evaluated and no test_metrics.json is written.
"""
import argparse
import json
import os
import os.path as osp
import sys

from mmdet.engine.hooks.utils import trigger_visualization_hook
from mmdet.evaluation import DumpDetResults
from mmengine.config import DictAction
from mmengine.dist import is_main_process
from mmengine.registry import RUNNERS
from mmengine.runner import Runner

from embedmask_mmdet.utils.dist import (finish_distributed, load_tool_config,
                                        setup_cpu_distributed)
from embedmask_mmdet.utils.tta import use_tta


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--work-dir', help='the dir to save metrics')
    parser.add_argument('--out', help='dump predictions to a .pkl file')
    parser.add_argument('--show', action='store_true',
                        help='show predictions in a window')
    parser.add_argument('--show-dir',
                        help='save painted predictions under work_dir/TIME/DIR')
    parser.add_argument('--wait-time', type=float, default=2,
                        help='seconds between shown images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--amp', action='store_true',
                        help='autocast: bf16 on a CPU, fp16 on a GPU')
    parser.add_argument('--channels-last', action='store_true',
                        help='NHWC images and conv weights (EmbedMask)')
    parser.add_argument('--tta', action='store_true',
                        help='test-time augmentation (the config\'s '
                        'tta_model / tta_pipeline, else a flip)')
    parser.add_argument('--launcher', default='none',
                        choices=['none', 'pytorch', 'slurm', 'mpi'])
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def format_only_prefixes(cfg) -> list:
    """The ``outfile_prefix`` of every test evaluator metric set to
    ``format_only`` (mmdet's way to write COCO results files for test-dev
    without evaluating: --cfg-options test_evaluator.format_only=True
    test_evaluator.outfile_prefix=PREFIX)."""
    evaluator = cfg.get('test_evaluator') or {}
    metrics = evaluator.get('metrics', evaluator) \
        if isinstance(evaluator, dict) else evaluator
    metrics = metrics if isinstance(metrics, (list, tuple)) else [metrics]
    return [m['outfile_prefix'] for m in metrics
            if m.get('format_only') and m.get('outfile_prefix')]


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    if args.out is not None and not args.out.endswith(('.pkl', '.pickle')):
        sys.exit(f'error: --out must end with .pkl or .pickle, got {args.out!r}')
    cfg = load_tool_config(args)
    cfg.load_from = args.checkpoint
    if args.amp:
        cfg.test_cfg = dict(cfg.get('test_cfg') or dict(type='TestLoop'),
                            fp16=True)
    if args.channels_last:
        if cfg.model.get('type') != 'EmbedMask':
            sys.exit(f'error: --channels-last: {args.config} builds '
                     f'{cfg.model.get("type")!r}, not EmbedMask')
        cfg.model.channels_last = True
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    if args.tta:
        cfg = use_tta(cfg)
    setup_cpu_distributed(cfg)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg \
        else RUNNERS.build(cfg)
    if args.out is not None:
        runner.test_evaluator.metrics.append(
            DumpDetResults(out_file_path=args.out))
    metrics = runner.test()
    prefixes = format_only_prefixes(cfg)
    if prefixes and not metrics:
        if is_main_process():
            for prefix in prefixes:
                files = [f'{prefix}.{kind}.json' for kind in ('bbox', 'segm')
                         if osp.isfile(f'{prefix}.{kind}.json')]
                print('test_evaluator.format_only: nothing evaluated; '
                      'results written to ' + ', '.join(files))
        finish_distributed()
        return
    if is_main_process():
        path = osp.join(cfg.work_dir, 'test_metrics.json')
        with open(path, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1,
                      sort_keys=True)
        print(f'metrics written to {path}')
    finish_distributed()


if __name__ == '__main__':
    main()
