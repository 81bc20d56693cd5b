"""The two quantizers on the prepared model (NNCF for OpenVINO's INT8,
onnxruntime's ``quantize_static``), and the ranking of INT8 convs by the
noise they add, which the greedy fallback keeps float first."""
import contextlib
import copy
import logging
import os.path as osp
from typing import List, Optional, Sequence

import numpy as np

from .onnx_graph import QuantizeError, norm_nodes


def quantize_nncf(model, feeds, excluded, options: dict, validate=None,
                  max_drop=None, num_val: int = 0):
    try:
        import nncf
    except ImportError:
        raise QuantizeError(
            '--backend openvino needs NNCF: pip install nncf (or pip install '
            "-e '.[deploy]'), or use --backend onnxruntime")
    from nncf.quantization.advanced_parameters import \
        AdvancedAccuracyRestorerParameters
    from nncf.quantization.advanced_parameters import \
        AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import \
        RangeEstimatorParametersSet
    advanced = dict(
        disable_bias_correction=options['bias_correction'] == 'none')
    if options['calibrate'] == 'minmax':
        # the activations' min and max over all images; NNCF's default
        # (the mean of per-image min / max) clips the images beyond it
        advanced['activations_range_estimator_params'] = \
            RangeEstimatorParametersSet.MINMAX
    kwargs = dict(
        preset=nncf.QuantizationPreset.MIXED if options['preset'] == 'mixed'
        else nncf.QuantizationPreset.PERFORMANCE,
        target_device=nncf.TargetDevice.CPU, subset_size=len(feeds),
        fast_bias_correction=options['bias_correction'] != 'full',
        advanced_parameters=AdvancedQuantizationParameters(**advanced),
        ignored_scope=nncf.IgnoredScope(names=list(excluded),
                                        validate=False))
    dataset = nncf.Dataset(feeds)
    # NNCF logs a line per node it does not quantize (hundreds here)
    with _log_level('nncf', logging.WARNING):
        if max_drop is None:
            return nncf.quantize(model, dataset, **kwargs)
        kwargs['advanced_quantization_parameters'] = kwargs.pop(
            'advanced_parameters')
        return nncf.quantize_with_accuracy_control(
            model, dataset, nncf.Dataset(list(range(num_val))), validate,
            max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE,
            advanced_accuracy_restorer_parameters=(
                AdvancedAccuracyRestorerParameters(num_ranking_workers=1)),
            **kwargs)


@contextlib.contextmanager
def _log_level(name: Optional[str], level: int):
    logger = logging.getLogger(name)
    old = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(old)


def quantize_ort(model, feeds, excluded, options: dict, tmp: str):
    """quantize_static on ``model`` without ``excluded`` and without the
    normalization steps (:func:`norm_nodes`): rounding GroupNorm's output
    and affine (its default) raised the box tower's INT8 error on the test
    model from 0.016 to 0.024 (relative) and cut its masks at IoU >= 0.9
    with fp32 from 99 % to 81 %. Its op types stay its default: with the
    convs only, a conv's output before a ReLU6 was rounded on its own range
    (scale 0.76 where the ReLU6's range gives 0.024; segm AP 0.491 for
    0.527 on the demo model)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):

        def __init__(self):
            self.items = iter(feeds)

        def get_next(self):
            return next(self.items, None)

        def rewind(self):
            self.items = iter(feeds)

    src, dst = osp.join(tmp, 'float.onnx'), osp.join(tmp, 'int8.onnx')
    onnx.save(model, src)
    # its root-logger warnings: one per per-channel Mul constant (GroupNorm's
    # affine), and a pre-processing hint
    with _log_level(None, logging.ERROR):
        _quantize_static(src, dst, Reader(),
                         list(excluded) + norm_nodes(model), options)
    return onnx.load(dst)


def _quantize_static(src, dst, reader, excluded, options):
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat,
                                         QuantType, quantize_static)
    quantize_static(
        src, dst, reader, quant_format=QuantFormat.QDQ, per_channel=True,
        # uint8 activations: the format ONNX Runtime's x86 kernels fuse
        # into QLinearConv on every CPU (int8 ones need VNNI)
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        # 7-bit weights: no vpmaddubsw saturation on AVX2 / AVX-512
        # without VNNI, so results do not depend on the CPU
        reduce_range=options['reduce_range'],
        nodes_to_exclude=list(excluded),
        calibrate_method={'minmax': CalibrationMethod.MinMax,
                          'percentile': CalibrationMethod.Percentile,
                          'entropy': CalibrationMethod.Entropy}[
                              options['calibrate']],
        extra_options=dict(
            WeightSymmetric=True, ActivationSymmetric=False,
            # a Relu / Clip after a Conv stays a node: removed, its clamp
            # would live in the Q/DQ pair that isolate_float_nodes bypasses
            QDQKeepRemovableActivations=True))


def noisiest_convs(model, qmodel, feeds, skip: Sequence[str], count: int
                   ) -> List[str]:
    """The INT8 convs that add the most relative error (INT8 vs fp32
    output, minus the same at their input, on ``feeds``): the ones to keep
    float first."""
    import onnx
    import onnxruntime as ort
    convs = [n for n in model.graph.node
             if n.op_type == 'Conv' and n.name not in set(skip)]
    tensors = sorted({t for n in convs for t in (n.input[0], n.output[0])})

    def run(m):
        m = copy.deepcopy(m)
        known = {o.name for o in m.graph.output}
        made = {o for n in m.graph.node for o in n.output}
        m.graph.output.extend(onnx.ValueInfoProto(name=t) for t in tensors
                              if t not in known and t in made)
        sess = ort.InferenceSession(m.SerializeToString(),
                                    providers=['CPUExecutionProvider'])
        names = [o.name for o in sess.get_outputs()]
        return [dict(zip(names, sess.run(None, f))) for f in feeds]

    ref, got = run(model), run(qmodel)

    def rel(t):
        pairs = [(r[t], g[t]) for r, g in zip(ref, got)
                 if t in r and t in g]
        den = sum(float(np.sum(a.astype(np.float64) ** 2)) for a, _ in pairs)
        num = sum(float(np.sum((a.astype(np.float64) - b) ** 2))
                  for a, b in pairs)
        return num / den if den > 0 else 0.
    gain = {n.name: rel(n.output[0]) - rel(n.input[0]) for n in convs}
    return sorted(gain, key=gain.get, reverse=True)[:count]

