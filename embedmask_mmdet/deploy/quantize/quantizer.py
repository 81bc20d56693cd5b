"""``quantize_onnx``: options checked, calibration, the quantizer, the
float nodes isolated, accuracy control (NNCF's, or the greedy fallback),
and the summary stored in the model and printed."""
import copy
import json
import os
import os.path as osp
import tempfile
import time
from collections import Counter
from typing import Callable, Optional, Sequence

from .backends import noisiest_convs, quantize_nncf, quantize_ort
from .data import calibration_feeds, sample_images
from .onnx_graph import (QuantizeError, float_region, isolate_float_nodes,
                         layers_text, load_model, name_nodes, norm_nodes,
                         qdq_summary)

QUANT_BACKENDS = ('openvino', 'onnxruntime')
CALIBRATIONS = {'openvino': ('minmax', 'mean'),
                'onnxruntime': ('minmax', 'percentile', 'entropy')}
META_QUANTIZATION = 'embedmask.quantization'


def _set_metadata(model, meta: dict, summary: Optional[dict] = None):
    entries = dict(meta)
    if summary is not None:
        entries[META_QUANTIZATION] = json.dumps(summary, sort_keys=True)
    del model.metadata_props[:]
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_onnx(model_file: str, out: str, calib_images: Sequence,
                  backend: str = 'openvino', num_images: int = 64,
                  max_drop: Optional[float] = None,
                  eval_fn: Optional[Callable[..., float]] = None,
                  config=None, head_convs: str = 'int8',
                  mask_convs: str = 'float',
                  extra_float: Sequence[str] = (),
                  preset: str = 'performance', bias_correction: str = 'none',
                  calibrate: str = 'minmax', reduce_range: bool = True,
                  seed: int = 0, max_rounds: int = 4,
                  verbose: bool = True) -> dict:
    """Quantizes an exported EmbedMask to INT8 (a QDQ .onnx) with the mask
    path and the decoding tail in float (the package docstring).

    Args:
        model_file (str): The fp32 .onnx written by ``export_onnx``.
        out (str): The INT8 .onnx to write.
        calib_images (Sequence[str | np.ndarray]): Calibration images
            (paths, or BGR uint8 arrays), e.g. from
            :func:`calibration_images`.
        backend (str): The quantizer, 'openvino' (NNCF) or 'onnxruntime'
            (``quantize_static``).
        num_images (int): How many of ``calib_images`` (a seeded sample).
        max_drop (float, optional): The largest segm AP drop accepted
            (absolute, e.g. 0.01); needs ``eval_fn``. 'openvino':
            ``nncf.quantize_with_accuracy_control``; 'onnxruntime': the
            greedy fallback (1, 2, 4, ... more float convs a round, at most
            ``max_rounds`` rounds).
        eval_fn (callable, optional): ``eval_fn(model_file, indices=None)``
            -> segm AP (higher is better), e.g. :class:`SegmAP`. Given
            without ``max_drop``, it only reports fp32 and INT8 AP.
        config (str | Config, optional): The model's config for the
            preprocessing; None: the one stored in the .onnx.
        head_convs (str): 'int8' or 'float': the class / box / centerness
            prediction convs.
        mask_convs (str): 'float'; 'int8' only to measure what it costs.
        extra_float (Sequence[str]): More Conv node names to keep float.
        preset (str): NNCF's 'performance' (symmetric activations) or
            'mixed' (asymmetric).
        bias_correction (str): NNCF's bias correction: 'none' (default;
            NNCF's own default 'fast' raised the pixel branch's INT8 error
            seven-fold on the test model: 0.148 vs 0.022 relative), 'fast'
            or 'full'.
        calibrate (str): The activation ranges: 'minmax' (over all
            calibration images); onnxruntime also 'percentile' or
            'entropy'; NNCF also 'mean' (its default: the mean of the
            per-image min / max, which clips the images beyond it).
        reduce_range (bool): onnxruntime: 7-bit weights (the package
            docstring).
        seed (int): The calibration sample's seed.
        max_rounds (int): The greedy fallback's rounds at most.
        verbose (bool): Print the summary (:func:`format_summary`).

    Returns:
        dict: The summary, also stored as ``embedmask.quantization`` in
        ``out``: backend and options, calibration images, convs INT8 /
        float (counts and the float ones' names), the mask path's convs and
        outputs, the decoding tail, the excluded node names, segm AP fp32
        and INT8 when evaluated, seconds; ``failed`` (a message) when the
        drop stays above ``max_drop``.
    """
    if backend not in QUANT_BACKENDS:
        raise QuantizeError(f'--backend {backend!r}: use one of '
                            f'{", ".join(QUANT_BACKENDS)}')
    if max_drop is not None and eval_fn is None:
        raise QuantizeError('--max-ap-drop needs an evaluation: a CONFIG '
                            'with a test set (or eval_fn)')
    if calibrate not in CALIBRATIONS[backend]:
        raise QuantizeError(f'--calibrate {calibrate!r} with --backend '
                            f'{backend}: use one of '
                            f'{", ".join(CALIBRATIONS[backend])}')
    if preset not in ('performance', 'mixed'):
        raise QuantizeError(f'--preset {preset!r}: use performance or mixed')
    if int(num_images) <= 0:
        raise QuantizeError(f'--num-images {num_images}: must be > 0')
    start = time.perf_counter()
    model = load_model(model_file)
    out_dir = osp.dirname(osp.abspath(out))
    if not osp.isdir(out_dir):
        raise QuantizeError(f'--out {out!r}: folder {out_dir!r} does not '
                            'exist')
    if osp.abspath(out) == osp.abspath(model_file):
        raise QuantizeError(f'--out {out!r} is the input model; name a new '
                            'file')
    if not len(calib_images):
        raise QuantizeError('no calibration images; pass --calib-dir DIR '
                            'or a CONFIG whose train split has images')
    name_nodes(model)
    meta = {p.key: p.value for p in model.metadata_props}
    feeds = calibration_feeds(model_file,
                              sample_images(calib_images, num_images, seed),
                              config)
    if bias_correction not in ('none', 'fast', 'full'):
        raise QuantizeError(f'--bias-correction {bias_correction!r}: use '
                            'none, fast or full')
    options = dict(head_convs=head_convs, mask_convs=mask_convs,
                   preset=preset, bias_correction=bias_correction,
                   calibrate=calibrate,
                   reduce_range=reduce_range, seed=seed)
    fp32_ap = eval_fn(model_file) if eval_fn is not None else None
    extra, rounds, ap = list(extra_float), [], None
    with tempfile.TemporaryDirectory(prefix='embedmask_int8_') as tmp:
        for round_ in range(max_rounds + 1):
            region = float_region(model, head_convs, mask_convs, extra)
            if backend == 'openvino':
                validate = None
                if max_drop is not None:
                    validate = _nncf_validation(eval_fn, meta, tmp)
                qmodel = quantize_nncf(
                    model, feeds, region['excluded'], options, validate,
                    max_drop, len(eval_fn) if hasattr(eval_fn, '__len__')
                    else 1)
            else:
                qmodel = quantize_ort(model, feeds, region['excluded'],
                                      options, tmp)
            rewired = isolate_float_nodes(qmodel, region['excluded'], model)
            _set_metadata(qmodel, meta)
            onnx_save(qmodel, out)
            if eval_fn is not None:
                ap = eval_fn(out)
            rounds.append(dict(float_convs=len(qdq_summary(
                qmodel, region)['float_convs']), segm_ap=ap))
            if max_drop is None or backend == 'openvino' or \
                    fp32_ap - ap <= max_drop or round_ == max_rounds:
                break
            extra += noisiest_convs(
                model, qmodel, feeds[:8], region['float_convs'],
                count=2 ** round_)
        summary = _summary(qmodel, region, backend, options, len(feeds),
                           rewired, fp32_ap, ap, max_drop, rounds,
                           time.perf_counter() - start)
        if backend == 'onnxruntime':
            summary['float_norm_nodes'] = len(norm_nodes(model))
        if max_drop is not None and fp32_ap - ap > max_drop:
            summary['failed'] = (
                f'segm AP drop {fp32_ap - ap:.4f} > --max-ap-drop {max_drop} '
                f'(fp32 {fp32_ap:.4f}, INT8 {ap:.4f}, {len(rounds)} '
                f'round(s)); the last model is in {out}')
        _set_metadata(qmodel, meta, summary)
        onnx_save(qmodel, out)
    if verbose:
        print(format_summary(summary))
    return summary


def onnx_save(model, path: str) -> None:
    import onnx
    onnx.save(model, path)


def _nncf_validation(eval_fn, meta: dict, tmp: str):
    """NNCF's ``validation_fn(model, items)`` over ``eval_fn(path,
    indices)``: ``items`` are indices into the test set."""
    def validate(model, items):
        fd, path = tempfile.mkstemp(suffix='.onnx', dir=tmp)
        os.close(fd)
        model = copy.deepcopy(model)
        _set_metadata(model, meta)
        onnx_save(model, path)
        try:
            return _call_eval(eval_fn, path, list(items))
        finally:
            os.remove(path)
    return validate


def _call_eval(eval_fn, path: str, indices) -> float:
    """``eval_fn(path, indices)``, or ``eval_fn(path)`` (the whole test
    set) for a function without the second argument."""
    import inspect
    try:
        params = inspect.signature(eval_fn).parameters
    except (TypeError, ValueError):
        params = {}
    if len(params) >= 2 or any(p.kind == p.VAR_POSITIONAL
                               for p in params.values()):
        return eval_fn(path, indices)
    return eval_fn(path)


def _summary(qmodel, region, backend, options, num_images, rewired,
             fp32_ap, ap, max_drop, rounds, seconds) -> dict:
    found = qdq_summary(qmodel, region)
    quantized = set(found['quantized_convs'])
    return dict(
        backend=backend,
        tool='nncf' if backend == 'openvino' else 'onnxruntime.quantization',
        options=options, calibration_images=num_images,
        convs=len(region['convs']), quantized_convs=len(quantized),
        float_convs=len(region['convs']) - len(quantized),
        float_conv_names=[c for c in region['convs'] if c not in quantized],
        mask_outputs=region['mask_outputs'],
        mask_path_convs=region['mask_convs'],
        mask_path_layers=layers_text(region['mask_convs'], region['layers']),
        head_layers=layers_text(region['head_convs'], region['layers']),
        extra_float_layers=layers_text(region['extra_convs'],
                                       region['layers']),
        head_convs=region['head_convs'],
        extra_float_convs=region['extra_convs'],
        tail_nodes=len(region['tail']),
        tail_ops=dict(Counter(n.op_type for n in qmodel.graph.node
                              if n.name in set(region['tail']))),
        excluded_nodes=region['excluded'],
        excluded_reading_qdq=found['excluded_reading_qdq'],
        rewired_inputs=rewired, fp32_segm_ap=fp32_ap, int8_segm_ap=ap,
        max_drop=max_drop, rounds=rounds, seconds=round(seconds, 1))


def format_summary(summary: dict) -> str:
    """The printed form of :func:`quantize_onnx`'s summary."""
    options = summary['options']
    lines = [
        f'INT8 by {summary["tool"]} ({summary["calibration_images"]} '
        f'calibration images, {summary["seconds"]:.0f} s): '
        f'{summary["quantized_convs"]} of {summary["convs"]} convs INT8, '
        f'{summary["float_convs"]} float',
        f'  mask outputs: {", ".join(summary["mask_outputs"])}',
        f'  mask-path convs ({len(summary["mask_path_convs"])}, '
        f'{options["mask_convs"]}): {summary["mask_path_layers"]}',
        f'  class/box/centerness convs ({len(summary["head_convs"])}, '
        f'{options["head_convs"]}): {summary["head_layers"]}',
    ]
    if summary['extra_float_convs']:
        lines.append(f'  also float ({len(summary["extra_float_convs"])}): '
                     f'{summary["extra_float_layers"]} ('
                     + ', '.join(summary['extra_float_convs']) + ')')
    if summary.get('float_norm_nodes'):
        lines.append(f'  normalization steps (GroupNorm) float: '
                     f'{summary["float_norm_nodes"]} nodes')
    ops = sorted(summary['tail_ops'].items(), key=lambda kv: -kv[1])
    lines.append(f'  float decoding tail: {summary["tail_nodes"]} nodes ('
                 + ', '.join(f'{k} {v}' for k, v in ops[:6]) + ', ...)')
    if summary['fp32_segm_ap'] is not None:
        drop = summary['fp32_segm_ap'] - summary['int8_segm_ap']
        lines.append(
            f'  segm AP: fp32 {summary["fp32_segm_ap"]:.4f}, INT8 '
            f'{summary["int8_segm_ap"]:.4f} (drop {drop:.4f}'
            + (f', bound {summary["max_drop"]}'
               if summary['max_drop'] is not None else '') + ')')
    if summary.get('failed'):
        lines.append(f'  FAILED: {summary["failed"]}')
    return '\n'.join(lines)
