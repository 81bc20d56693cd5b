"""Evaluate an exported EmbedMask (.onnx) with the config's test dataloader
and evaluator (CocoMetric), as tools/test.py evaluates the PyTorch model.

    python tools/deployment/onnx_test.py CONFIG MODEL.onnx
        [--backend onnxruntime|openvino] [--precision fp32|bf16]
        [--work-dir DIR] [--out PREFIX [--format-only]]
        [--cfg-options k=v ...]

Prints the metrics; with --work-dir also writes DIR/onnx_test_metrics.json.

``--out PREFIX`` keeps the COCO results files, PREFIX.bbox.json and
PREFIX.segm.json (CocoMetric's ``outfile_prefix``). With ``--format-only``
they are all it does: the predictions are written, nothing is evaluated, as
mmdet's ``test_evaluator.format_only``; this is the COCO test-dev submission,
whose annotation file lists images only (point the test dataloader and
evaluator at it with --cfg-options, see docs/deployment.md).
"""
import argparse
import json
import os
import os.path as osp
import sys
import time

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope

from embedmask_mmdet.deploy import EmbedMaskONNXModel, evaluate
from embedmask_mmdet.deploy.quantize import META_QUANTIZATION
from embedmask_mmdet.deploy.runtime import read_metadata


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('model', help='the exported .onnx')
    parser.add_argument('--backend', default='onnxruntime',
                        choices=['onnxruntime', 'openvino'])
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    parser.add_argument('--work-dir')
    parser.add_argument(
        '--out', metavar='PREFIX',
        help='write the COCO results files PREFIX.bbox.json and '
        'PREFIX.segm.json')
    parser.add_argument(
        '--format-only', action='store_true',
        help='only write the results files of --out, evaluate nothing '
        '(test-dev)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def set_outfile(cfg, prefix: str, format_only: bool) -> None:
    """Every CocoMetric of ``cfg.test_evaluator`` writes its results files
    to ``prefix`` (and, with ``format_only``, evaluates nothing)."""
    evaluators = cfg.test_evaluator if isinstance(
        cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
    coco = [e for e in evaluators
            if str(e.get('type', '')).split('.')[-1] == 'CocoMetric']
    if not coco:
        sys.exit('error: --out / --format-only: the config\'s test_evaluator '
                 f'has no CocoMetric ({[e.get("type") for e in evaluators]})')
    for evaluator in coco:
        evaluator.outfile_prefix = prefix
        evaluator.format_only = format_only


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.model, 'model')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    if args.format_only and not args.out:
        sys.exit('error: --format-only writes the results files of --out '
                 'PREFIX: give --out')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    if args.out:
        prefix = osp.abspath(args.out)
        os.makedirs(osp.dirname(prefix), exist_ok=True)
        set_outfile(cfg, prefix, args.format_only)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = EmbedMaskONNXModel(args.model, args.backend, config=cfg,
                               precision=args.precision)
    start = time.perf_counter()
    metrics = evaluate(cfg, model.predict_batch)
    # an INT8 graph runs with precision fp32 (its float parts): say INT8
    graph = 'INT8' if META_QUANTIZATION in read_metadata(args.model) \
        else args.precision
    print(f'{args.backend} ({graph}) on {args.model}: '
          f'{time.perf_counter() - start:.1f} s')
    for key, value in metrics.items():
        print(f'{key}: {value}')
    if args.out:
        for kind in ('bbox', 'segm'):
            path = f'{prefix}.{kind}.json'
            if osp.isfile(path):
                with open(path) as f:
                    print(f'{path}: {len(json.load(f))} {kind} results')
    if args.format_only:
        print('--format-only: nothing evaluated')
        return
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        path = osp.join(args.work_dir, 'onnx_test_metrics.json')
        with open(path, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1,
                      sort_keys=True)
        print(f'metrics written to {path}')


if __name__ == '__main__':
    main()
