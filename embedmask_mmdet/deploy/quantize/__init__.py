"""INT8 post-training quantization of an exported EmbedMask (.onnx), with
the mask path kept in float.

EmbedMask's mask is a quadratic form of two embeddings,
p = exp(-sum_d s_d (x_d - q_d)^2): an INT8 rounding of the pixel
embedding x, the proposal embedding q or the margin s moves the
p = mask_thr boundary by pixels (why INT8 YOLO-seg models lose their
masks). So the backbone, the neck and the heads' towers run in INT8, and
the **float region** stays float (:func:`float_region`):

- the **mask path's convs**: walking back from every output that is not
  ``dets`` / ``labels`` (the compact contract's embeddings, margins, points
  and ``pixel_embeds``, or the dense ``masks``) through the inputs that
  carry values (not a Gather's indices nor a Reshape's shape), the first
  Conv on each path: the pixel branch's prediction conv and the proposal
  embedding and margin convs of each level. In ``EmbedMaskBboxHead`` these
  are convs of their own (``ProposalEmbeddingHead``), not shared with the
  class / box / centerness convs; they read the box tower, which those
  share;
- the **decoding tail**: every node between the last convs and the
  outputs (sigmoid, exp, box decoding in pixels, candidate selection, NMS,
  the coordinate channels, the mask formula). INT8 box coordinates would be
  steps of pixels, and the score thresholds compare sigmoid outputs.

The class, box and centerness prediction convs read INT8 inputs and
produce float outputs (``head_convs='int8'``, the default) or stay float
(``'float'``).

The result is a QDQ (QuantizeLinear / DequantizeLinear) .onnx that ONNX
Runtime and OpenVINO both run, so ``EmbedMaskONNXModel``,
``tools/deployment/onnx_test.py`` and ``onnx_demo.py`` load it unchanged.
It keeps the input's ``metadata_props`` and adds ``embedmask.quantization``
(JSON: what was quantized, what was kept float).

Backends (the quantizer; either runtime runs either result):

- ``'openvino'``: NNCF (``nncf.quantize`` on the ONNX model; with
  ``max_drop`` ``nncf.quantize_with_accuracy_control``, which NNCF's ONNX
  backend supports). NNCF places its quantizers for OpenVINO's INT8
  transformations: OpenVINO runs its convs in INT8; ONNX Runtime fuses
  few of them (it needs Q right after each Conv and, on x86 CPUs without
  VNNI, uint8 activations) and runs the rest as float convs.
- ``'onnxruntime'``: ``onnxruntime.quantization.quantize_static`` (QDQ on
  the convs' inputs, uint8 activations, int8 per-channel weights with
  ``reduce_range``: the format ONNX Runtime's x86 kernels fuse, 7-bit
  weights against the AVX2 / AVX-512 ``vpmaddubsw`` saturation, so the
  integer convs give the same results on every x86 CPU). ``max_drop``
  runs a greedy
  fallback: the convs that add the most INT8 noise are kept float, more
  each round, until the drop is within the bound.

The package, by responsibility: :mod:`.onnx_graph` (the exported graph
read and edited: what stays float, Q/DQ isolation), :mod:`.data` (the
calibration images and feeds, the test set's segm AP), :mod:`.backends`
(NNCF and ``quantize_static``, the greedy fallback's ranking) and
:mod:`.quantizer` (:func:`quantize_onnx`, its summary).
"""
from .data import (SegmAP, calibration_feeds, calibration_images,
                   sample_images)
from .onnx_graph import (DETECTION_OUTPUTS, HEAD_CONVS, MASK_CONVS,
                         META_CONFIG, NORM_OPS, QDQ_OPS, VALUE_INPUTS,
                         QuantizeError, float_region, isolate_float_nodes,
                         load_model, mask_outputs, name_nodes, norm_nodes,
                         qdq_summary, walk_back)
from .quantizer import (CALIBRATIONS, META_QUANTIZATION, QUANT_BACKENDS,
                        format_summary, onnx_save, quantize_onnx)

__all__ = [
    'CALIBRATIONS', 'DETECTION_OUTPUTS', 'HEAD_CONVS', 'MASK_CONVS',
    'META_CONFIG', 'META_QUANTIZATION', 'NORM_OPS', 'QDQ_OPS',
    'QUANT_BACKENDS', 'VALUE_INPUTS', 'QuantizeError', 'SegmAP',
    'calibration_feeds', 'calibration_images', 'float_region',
    'format_summary', 'isolate_float_nodes', 'load_model', 'mask_outputs',
    'name_nodes', 'norm_nodes', 'onnx_save', 'qdq_summary', 'quantize_onnx',
    'sample_images', 'walk_back'
]
