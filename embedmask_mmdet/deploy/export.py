"""Export an EmbedMask config + checkpoint to one ONNX graph.

The exporter is torch's own ``torch.onnx.export(dynamo=True)`` (the default
of torch 2.13): it captures the model with ``torch.export`` (symbolic input
sizes, so one graph serves every image size) and writes standard ONNX ops
only; NMS becomes ``NonMaxSuppression`` through a translation table. The
TorchScript exporter (``dynamo=False``) is deprecated, traces Python
control flow into constants (per-level top-k sizes would freeze at the
traced size) and needs hand-written symbolics. Export needs torch >= 2.7
(``custom_translation_table``, ``torch.compiler.is_exporting``): older ones
are refused with one line (:func:`check_torch`).
"""
import os.path as osp
from typing import Optional, Sequence

import torch
from mmengine.config import Config

from ..models.utils.torch_compat import export_torch_problem
from .graph import MASK_CONTRACTS, EmbedMaskGraph
from .nms import onnx_translation_table

INPUT_NAMES = ['image', 'img_shape']
# metadata_props keys of the exported model; the runtime reads them back
META_CONFIG = 'embedmask.config'
META_CLASSES = 'embedmask.classes'
META_MASKS = 'embedmask.masks'


class ExportError(ValueError):
    """Something the user can fix (the message says what)."""


def check_torch() -> None:
    """Raises ExportError (one line: the torch export needs and the one
    installed) on a torch older than ``torch_compat.EXPORT_MIN_TORCH``."""
    problem = export_torch_problem()
    if problem is not None:
        raise ExportError(problem)


def load_config(config) -> Config:
    if isinstance(config, Config):
        return config
    if not osp.isfile(str(config)):
        raise ExportError(f'config file {config!r} not found')
    return Config.fromfile(config)


def check_exportable(cfg: Config, source: str = 'the config') -> None:
    model_type = cfg.get('model', {}).get('type')
    if model_type != 'EmbedMask':
        raise ExportError(
            f'{source} builds model.type={model_type!r}; this exporter '
            'handles EmbedMask configs only (configs/embedmask/...). For '
            'other mmdet models use mmdeploy.')
    if cfg.model.get('bbox_head', {}).get('type') != 'EmbedMaskBboxHead' or \
            cfg.model.get('mask_head', {}).get('type') != 'EmbedMaskMaskHead':
        raise ExportError(
            f'{source}: model.bbox_head/mask_head must be EmbedMaskBboxHead/'
            'EmbedMaskMaskHead to be exported')


def pad_divisor(cfg: Config) -> int:
    return int(cfg.model.get('data_preprocessor', {}).get(
        'pad_size_divisor', 32) or 32)


def check_shape(shape: Sequence[int], divisor: int) -> None:
    if len(shape) != 2 or any(int(s) <= 0 or int(s) % divisor for s in shape):
        raise ExportError(
            f'--shape {" ".join(map(str, shape))}: height and width must be '
            f'positive multiples of {divisor} (the config\'s '
            'data_preprocessor.pad_size_divisor, to which inputs are padded)')


def build_model(cfg: Config, checkpoint: str):
    """The detector in eval mode on the CPU with ``checkpoint`` loaded."""
    from mmdet.apis import init_detector
    if not osp.isfile(str(checkpoint)):
        raise ExportError(f'checkpoint file {checkpoint!r} not found; train '
                          'one (tools/train.py) or convert the authors\' '
                          'weights (tools/model_converters/adelaidet2mmdet.py)')
    return init_detector(cfg, checkpoint, device='cpu')


# what META_MASKS says of each contract (docs/deployment.md has the rest)
MASK_CONTRACT_NOTES = {
    'compact': 'compact: dets, labels, embeddings, margins, points, '
               'pixel_embeds; p = exp(-sum s (x - q)^2), evaluated by the '
               'mask head\'s predict_by_feat; threshold: '
               'model.test_cfg.mask_thr',
    'dense': 'dense: float32 mask probabilities at the input size, 0 in the '
             'padding; threshold: model.test_cfg.mask_thr',
}


def fold_weight_arithmetic(model) -> None:
    """Folds arithmetic on weights into plain initializers, in place (an
    ``onnx_ir`` model). The exporter folds constants only up to 8192
    elements, so ``log_margin_conv``'s weight / ``margin_reduce_factor``
    stays a Div feeding the conv; INT8 quantizers (NNCF) recognise a conv's
    weight only as an initializer. Float32 division either way: the same
    values."""
    from onnxscript import optimizer
    limit = 1 << 24  # elements: larger than any weight of the models
    optimizer.optimize(model, num_iterations=1, input_size_limit=limit,
                       output_size_limit=limit)


def export_onnx(config, checkpoint: str, out: str,
                shape: Optional[Sequence[int]] = None, max_dets: int = 100,
                opset: Optional[int] = None, model=None,
                masks: str = 'compact'):
    """Writes ``out`` and returns the ``torch.onnx.ONNXProgram``.

    Args:
        config (str | Config): An EmbedMask config.
        checkpoint (str): Its weights.
        out (str): The .onnx file.
        shape (tuple[int, int], optional): A fixed (H, W) input; None: any
            size that is a multiple of the pad divisor.
        max_dets (int): Detections per image at most (the config's
            ``max_per_img`` if smaller).
        opset (int, optional): ONNX opset; None: the exporter's default.
        model (nn.Module, optional): An already built detector to export
            instead of building one from ``checkpoint``.
        masks (str): The mask outputs: 'compact' (the mask formula's
            per-detection terms and the pixel-embedding map; the runtime
            evaluates the masks) or 'dense' (N x H x W probabilities).
    """
    check_torch()
    cfg = load_config(config)
    check_exportable(cfg, config if isinstance(config, str) else 'the config')
    divisor = pad_divisor(cfg)
    if shape is not None:
        check_shape(shape, divisor)
    if max_dets <= 0:
        raise ExportError(f'--max-dets must be > 0, got {max_dets}')
    if masks not in MASK_CONTRACTS:
        raise ExportError(f'--masks {masks!r}: use one of '
                          f'{", ".join(MASK_CONTRACTS)}')
    if model is None:
        model = build_model(cfg, checkpoint)
    graph = EmbedMaskGraph(model, max_dets=max_dets, masks=masks).eval()
    # no level of the example may be 1 x 1: torch.export would specialise
    # those sizes to 1 (P7 is at stride 128)
    height, width = shape if shape is not None else (
        divisor * -(-256 // divisor), divisor * -(-384 // divisor))
    example = (torch.zeros(1, 3, int(height), int(width)),
               torch.tensor([int(height), int(width)]))
    dynamic_shapes = None
    if shape is None:
        # multiples of the divisor: the graph may rely on exact strides
        rows = torch.export.Dim('rows', min=1, max=8192 // divisor)
        cols = torch.export.Dim('cols', min=1, max=8192 // divisor)
        dynamic_shapes = ({2: divisor * rows, 3: divisor * cols}, None)
    with torch.no_grad():
        program = torch.onnx.export(
            graph, example, dynamo=True, dynamic_shapes=dynamic_shapes,
            input_names=INPUT_NAMES, output_names=list(MASK_CONTRACTS[masks]),
            opset_version=opset,
            custom_translation_table=onnx_translation_table(), verbose=False)
    fold_weight_arithmetic(program.model)
    meta = program.model.metadata_props
    meta[META_CONFIG] = cfg.pretty_text
    classes = (getattr(model, 'dataset_meta', None) or {}).get('classes')
    if classes:
        meta[META_CLASSES] = '\n'.join(classes)
    meta[META_MASKS] = MASK_CONTRACT_NOTES[masks]
    program.save(out)
    return program
