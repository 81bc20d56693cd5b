"""Evaluate an exported EmbedMask (.onnx) with the config's test dataloader
and evaluator (CocoMetric), as tools/test.py evaluates the PyTorch model.

    python tools/deployment/onnx_test.py CONFIG MODEL.onnx
        [--backend onnxruntime|openvino] [--precision fp32|bf16]
        [--work-dir DIR] [--cfg-options k=v ...]

Prints the metrics; with --work-dir also writes DIR/onnx_test_metrics.json.
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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('model', help='the exported .onnx')
    parser.add_argument('--backend', default='onnxruntime',
                        choices=['onnxruntime', 'openvino'])
    parser.add_argument('--precision', default='fp32', choices=['fp32', 'bf16'])
    parser.add_argument('--work-dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    for path, what in ((args.config, 'config'), (args.model, 'model')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file {path!r} not found')
    cfg = Config.fromfile(args.config)
    if args.cfg_options:
        cfg.merge_from_dict(args.cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model = EmbedMaskONNXModel(args.model, args.backend, config=cfg,
                               precision=args.precision)
    start = time.perf_counter()
    metrics = evaluate(cfg, model.predict_batch)
    print(f'{args.backend} ({args.precision}) on {args.model}: '
          f'{time.perf_counter() - start:.1f} s')
    for key, value in metrics.items():
        print(f'{key}: {value}')
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
        path = osp.join(args.work_dir, 'onnx_test_metrics.json')
        with open(path, 'w') as f:
            json.dump({k: float(v) for k, v in metrics.items()}, f, indent=1,
                      sort_keys=True)
        print(f'metrics written to {path}')


if __name__ == '__main__':
    main()
