"""Deployment: one ONNX graph (boxes + masks, standard ops) and a runtime
for ONNX Runtime / OpenVINO that returns mmdet data samples.

``onnx``, ``onnxruntime``, ``onnxscript`` and ``openvino`` are the
``deploy`` extra (``pip install embedmask_mmdet[deploy]``); they are
imported only when used.
"""
from .export import ExportError, export_onnx
from .graph import EmbedMaskGraph
from .runtime import EmbedMaskONNXModel, evaluate

__all__ = ['EmbedMaskGraph', 'EmbedMaskONNXModel', 'ExportError',
           'evaluate', 'export_onnx']
