"""Export an EmbedMask config + checkpoint to one ONNX graph.

    python tools/deployment/export_onnx.py CONFIG CHECKPOINT --out model.onnx
        [--shape H W | --dynamic] [--max-dets 100] [--masks compact|dense]
        [--opset N] [--no-verify]

Inputs: ``image`` (1, 3, H, W) float32, the config's data preprocessor
output (normalised, zero-padded to its pad_size_divisor), and ``img_shape``
(2,) int64, the un-padded (h, w), an input only of designs that read it
(mmdet's candidate selection clips boxes to it). Outputs: ``dets`` (N, 5)
x1 y1 x2 y2 score in input pixels, ``labels`` (N,) int64, then the masks:

- ``--masks compact`` (default): ``embeddings`` (N, D), ``margins`` (N, D),
  ``points`` (N, 2) and ``pixel_embeds`` (1, D, H/s, W/s), the terms of
  p = exp(-sum_d s_d (x_d - q_d)^2) (q: embeddings with the points'
  coordinates added); ``EmbedMaskONNXModel`` evaluates each mask inside
  the region it can reach, at the original image size;
- ``--masks dense``: ``masks`` (N, H, W) float32 mask probabilities
  (threshold: the config's test_cfg.mask_thr; crop to img_shape, the
  padding's values are not an image's), for runtimes of your own.

docs/deployment.md states both contracts. NMS is ONNX
``NonMaxSuppression``; no custom op. Without ``--shape`` H and W may be any
multiples of the divisor. The config is stored in the .onnx, so
``EmbedMaskONNXModel(model.onnx)`` needs nothing else.

After writing, the graph is run by ONNX Runtime on a real-sized input and
compared with PyTorch (printed); ``--no-verify`` skips that.
"""
import argparse
import sys
import time

import numpy as np
import torch

from embedmask_mmdet.deploy.export import (ExportError, build_model,
                                           check_exportable, check_torch,
                                           export_onnx, load_config,
                                           pad_divisor)
from embedmask_mmdet.deploy.graph import EmbedMaskGraph


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--out', required=True, help='the .onnx to write')
    size = parser.add_mutually_exclusive_group()
    size.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'),
                      help='a fixed input size (multiples of the divisor)')
    size.add_argument('--dynamic', action='store_true',
                      help='any input size (the default)')
    parser.add_argument('--max-dets', type=int, default=100)
    parser.add_argument('--masks', default='compact',
                        choices=['compact', 'dense'],
                        help='mask outputs: the closed form\'s terms '
                        '(compact) or N x H x W probabilities (dense)')
    parser.add_argument('--opset', type=int, default=None)
    parser.add_argument('--no-verify', action='store_true')
    return parser.parse_args(argv)


def verify(graph, out: str, shape) -> None:
    """ORT vs PyTorch on one random input of ``shape``."""
    import onnxruntime as ort
    torch.manual_seed(0)
    image = torch.randn(1, 3, *shape)
    img_shape = torch.tensor(shape)
    with torch.no_grad():
        ref = [t.numpy() for t in graph(image, img_shape)]
    session = ort.InferenceSession(out, providers=['CPUExecutionProvider'])
    feed = {'image': image.numpy(), 'img_shape': img_shape.numpy()}
    got = session.run(None, {i.name: feed[i.name]
                             for i in session.get_inputs()})
    same = len(got[0]) == len(ref[0]) and (got[1] == ref[1]).all()
    err = [float(np.abs(g - r).max()) if same and g.size else 0.
           for g, r in zip(got, ref)]
    names = [o.name for o in session.get_outputs()]
    mask_err = ', '.join(f'{n} {e:.2e}' for n, e in zip(names[2:], err[2:]))
    print(f'verify ({shape[0]}x{shape[1]} random input): {len(got[0])} vs '
          f'{len(ref[0])} detections, labels {"equal" if same else "DIFFER"}'
          + (f', max |diff|: box/score {err[0]:.2e}, {mask_err}'
             if same else ''))
    if not same:
        sys.exit('error: the exported graph does not reproduce PyTorch')


def main(argv=None):
    args = parse_args(argv)
    try:
        check_torch()
        cfg = load_config(args.config)
        check_exportable(cfg, args.config)
        model = build_model(cfg, args.checkpoint)
        start = time.perf_counter()
        export_onnx(cfg, args.checkpoint, args.out, shape=args.shape,
                    max_dets=args.max_dets, opset=args.opset, model=model,
                    masks=args.masks)
    except ExportError as e:
        sys.exit(f'error: {e}')
    size = 'fixed ' + 'x'.join(map(str, args.shape)) if args.shape else \
        'any multiple of ' + str(pad_divisor(cfg))
    print(f'wrote {args.out} ({size} input, {args.masks} masks, torch.onnx '
          f'dynamo exporter, {time.perf_counter() - start:.0f} s)')
    if not args.no_verify:
        verify(EmbedMaskGraph(model, args.max_dets, args.masks), args.out,
               tuple(args.shape) if args.shape else (320, 320))


if __name__ == '__main__':
    main()
