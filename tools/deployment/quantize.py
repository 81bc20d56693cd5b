"""Quantize an exported EmbedMask (.onnx) to INT8, the mask path in float.

    python tools/deployment/quantize.py CONFIG MODEL.onnx --out OUT.onnx
        [--calib-dir DIR] [--num-images N] [--backend openvino|onnxruntime]
        [--max-ap-drop X] [--eval] [--head-convs int8|float]
        [--keep-float CONV ...] [--calibrate minmax|mean|percentile|entropy]
        [--bias-correction none|fast|full] [--seed S]

Calibration images: --calib-dir's images, or else the config's train split.
The output is a QDQ .onnx that ONNX Runtime and OpenVINO both run
(tools/deployment/onnx_test.py, onnx_demo.py, EmbedMaskONNXModel load it
as they load the fp32 one); it keeps the input's metadata and adds
'embedmask.quantization'. --max-ap-drop (and --eval) evaluate segm AP on the
config's test set: --backend openvino uses NNCF's accuracy control,
onnxruntime the greedy fallback; the tool exits 1 when the drop stays above
the bound. See docs/deployment.md, "INT8".
"""
import argparse
import os.path as osp
import sys

from mmengine.config import Config, DictAction
from mmengine.registry import init_default_scope


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='the model\'s config (its train split '
                        'calibrates, its test set evaluates)')
    parser.add_argument('model', help='the fp32 .onnx from export_onnx.py')
    parser.add_argument('--out', required=True, help='the INT8 .onnx to write')
    parser.add_argument('--calib-dir', help='a folder of calibration images '
                        '(default: the config\'s train split)')
    parser.add_argument('--num-images', type=int, default=64,
                        help='calibration images (a seeded sample)')
    parser.add_argument('--backend', default='openvino',
                        help='the quantizer: openvino (NNCF) or onnxruntime '
                        '(quantize_static)')
    parser.add_argument('--max-ap-drop', type=float,
                        help='the largest segm AP drop accepted, e.g. 0.01')
    parser.add_argument('--eval', action='store_true',
                        help='report fp32 and INT8 segm AP (no bound)')
    parser.add_argument('--eval-backend', choices=['onnxruntime', 'openvino'],
                        help='the runtime that evaluates (default: the '
                        'quantizer\'s)')
    parser.add_argument('--head-convs', default='int8',
                        help='the class/box/centerness convs: int8 or float')
    parser.add_argument('--keep-float', nargs='+', default=[],
                        metavar='CONV', help='more Conv node names to keep '
                        'float')
    parser.add_argument('--calibrate', default='minmax',
                        help='activation ranges: minmax (both), mean '
                        '(openvino), percentile or entropy (onnxruntime)')
    parser.add_argument('--bias-correction', default='none',
                        choices=['none', 'fast', 'full'],
                        help='NNCF\'s bias correction (--backend openvino)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from embedmask_mmdet.deploy.quantize import (QUANT_BACKENDS,
                                                 QuantizeError, SegmAP,
                                                 calibration_images,
                                                 quantize_onnx)
    try:
        if args.backend not in QUANT_BACKENDS:
            raise QuantizeError(f'--backend {args.backend!r}: use one of '
                                f'{", ".join(QUANT_BACKENDS)}')
        if not osp.isfile(args.config):
            raise QuantizeError(f'CONFIG {args.config!r}: no such file')
        cfg = Config.fromfile(args.config)
        if args.cfg_options:
            cfg.merge_from_dict(args.cfg_options)
        if cfg.get('model', {}).get('type') != 'EmbedMask':
            raise QuantizeError(
                f'CONFIG {args.config!r} builds model.type='
                f'{cfg.get("model", {}).get("type")!r}; pass the EmbedMask '
                'config the .onnx was exported from')
        init_default_scope(cfg.get('default_scope', 'mmdet'))
        images = calibration_images(cfg, args.calib_dir)
        eval_fn = None
        if args.max_ap_drop is not None or args.eval:
            eval_fn = SegmAP(cfg, args.eval_backend or args.backend)
        summary = quantize_onnx(
            args.model, args.out, images, backend=args.backend,
            num_images=args.num_images, max_drop=args.max_ap_drop,
            eval_fn=eval_fn, config=cfg, head_convs=args.head_convs,
            extra_float=args.keep_float, seed=args.seed,
            bias_correction=args.bias_correction, calibrate=args.calibrate)
    except QuantizeError as e:
        sys.exit(f'error: {e}')
    print(f'written: {args.out}')
    if summary.get('failed'):
        sys.exit(1)


if __name__ == '__main__':
    main()
