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
"""
import contextlib
import copy
import json
import logging
import os
import os.path as osp
import random
import tempfile
import time
import warnings
from collections import Counter
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

QUANT_BACKENDS = ('openvino', 'onnxruntime')
HEAD_CONVS = ('int8', 'float')
MASK_CONVS = ('float', 'int8')
CALIBRATIONS = {'openvino': ('minmax', 'mean'),
                'onnxruntime': ('minmax', 'percentile', 'entropy')}
DETECTION_OUTPUTS = ('dets', 'labels')
META_QUANTIZATION = 'embedmask.quantization'
# export.META_CONFIG, repeated so that loading this module does not import
# the exporter (torch.onnx)
META_CONFIG = 'embedmask.config'
# the inputs of these ops that carry values into their output; the others
# (indices, shapes, axes, pads) only select or shape them
VALUE_INPUTS = {
    'Gather': (0,), 'GatherElements': (0,), 'GatherND': (0,),
    'Slice': (0,), 'Reshape': (0,), 'Expand': (0,), 'Tile': (0,),
    'Resize': (0,), 'Pad': (0, 2), 'TopK': (0,), 'Unsqueeze': (0,),
    'Squeeze': (0,), 'Where': (1, 2), 'ScatterND': (0, 2),
    'ScatterElements': (0, 2), 'Split': (0,), 'ReduceMean': (0,),
    'ReduceSum': (0,), 'ReduceMax': (0,), 'ReduceMin': (0,),
}
QDQ_OPS = ('QuantizeLinear', 'DequantizeLinear')


class QuantizeError(ValueError):
    """Something the user can fix; the message names the option and what
    to do."""


# ---------------------------------------------------------------- the graph
def load_model(model_file: str):
    """The exported EmbedMask .onnx as a ``ModelProto``; QuantizeError for
    a missing file, a file that is not an fp32 EmbedMask export."""
    import onnx
    if not osp.isfile(str(model_file)):
        raise QuantizeError(
            f'MODEL {model_file!r}: no such file; export one with '
            'tools/deployment/export_onnx.py CONFIG CHECKPOINT --out '
            'MODEL.onnx')
    try:
        model = onnx.load(model_file)
    except Exception as e:  # onnx's DecodeError, OSError
        raise QuantizeError(
            f'MODEL {model_file!r} is not an ONNX file ({type(e).__name__}: '
            f'{str(e)[:200]}); pass the .onnx written by '
            'tools/deployment/export_onnx.py')
    meta = {p.key for p in model.metadata_props}
    outputs = [o.name for o in model.graph.output]
    inputs = [i.name for i in model.graph.input]
    problems = []
    if META_CONFIG not in meta:
        problems.append(f'no {META_CONFIG!r} metadata')
    if 'image' not in inputs:
        problems.append(f'its inputs {inputs} lack "image"')
    if any(o not in outputs for o in DETECTION_OUTPUTS) or \
            len(outputs) <= len(DETECTION_OUTPUTS):
        problems.append(f'its outputs {outputs} are not dets, labels and '
                        'the mask outputs')
    if any(n.op_type in QDQ_OPS for n in model.graph.node):
        problems.append('it is quantized already (QuantizeLinear / '
                        'DequantizeLinear nodes)')
    if problems:
        raise QuantizeError(
            f'MODEL {model_file!r} is not an fp32 EmbedMask export ('
            + '; '.join(problems) + '); pass the .onnx written by '
            'tools/deployment/export_onnx.py')
    return model


def mask_outputs(model) -> List[str]:
    """The mask path's outputs: every graph output but dets and labels."""
    return [o.name for o in model.graph.output
            if o.name not in DETECTION_OUTPUTS]


def _producers(graph) -> Dict[str, object]:
    return {out: node for node in graph.node for out in node.output if out}


def walk_back(graph, outputs: Sequence[str], values_only: bool
              ) -> Tuple[List[str], List[str]]:
    """The nodes reached backwards from ``outputs`` without passing
    through a Conv, and the Convs where the walk stopped (both in graph
    order). With ``values_only`` only the inputs that carry values
    (``VALUE_INPUTS``) are followed."""
    producer = _producers(graph)
    seen, convs, stack = set(), set(), list(outputs)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        if node.op_type == 'Conv':
            convs.add(node.name)
            continue
        inputs = list(node.input)
        if values_only and node.op_type in VALUE_INPUTS:
            inputs = [inputs[i] for i in VALUE_INPUTS[node.op_type]
                      if i < len(inputs)]
        stack.extend(name for name in inputs if name)
    return ([n.name for n in graph.node
             if n.name in seen and n.name not in convs],
            [n.name for n in graph.node if n.name in convs])


def float_region(model, head_convs: str = 'int8', mask_convs: str = 'float',
                 extra_float: Sequence[str] = ()) -> dict:
    """What stays float (module docstring).

    Args:
        model (onnx.ModelProto): The exported graph (nodes named: see
            :func:`name_nodes`).
        head_convs (str): 'int8': the class / box / centerness prediction
            convs read INT8 inputs (their outputs are float); 'float'.
        mask_convs (str): 'float' (the point of this module); 'int8'
            quantizes the mask path's convs too (for measuring why not).
        extra_float (Sequence[str]): More Conv node names to keep float.

    Returns:
        dict: ``mask_outputs``; ``mask_convs`` (the mask path's first
        convs); ``head_convs`` (the other convs the decoding tail starts
        from); ``extra_convs``; ``float_convs`` (all Convs kept float);
        ``tail`` (the non-Conv nodes between the last convs and the
        outputs); ``excluded`` (every node kept float); ``convs`` (all
        Conv names); all in graph order.
    """
    if head_convs not in HEAD_CONVS:
        raise QuantizeError(f'--head-convs {head_convs!r}: use one of '
                            f'{", ".join(HEAD_CONVS)}')
    if mask_convs not in MASK_CONVS:
        raise QuantizeError(f'mask_convs={mask_convs!r}: use one of '
                            f'{", ".join(MASK_CONVS)}')
    graph = model.graph
    outs = mask_outputs(model)
    tail, boundary = walk_back(graph, [o.name for o in graph.output],
                               values_only=False)
    _, mask_path = walk_back(graph, outs, values_only=True)
    det_convs = [c for c in boundary if c not in set(mask_path)]
    all_convs = [n.name for n in graph.node if n.op_type == 'Conv']
    unknown = sorted(set(extra_float) - set(all_convs))
    if unknown:
        raise QuantizeError(f'--keep-float {" ".join(unknown[:5])}: not '
                            'Conv nodes of the model (the summary of a run '
                            'lists the Conv names)')
    kept = set(extra_float)
    if mask_convs == 'float':
        kept |= set(mask_path)
    if head_convs == 'float':
        kept |= set(det_convs)
    excluded = set(tail) | kept
    nodes = {n.name: n for n in graph.node}
    return dict(
        layers={c: _layer_name(nodes[c]) for c in all_convs},
        mask_outputs=outs, mask_convs=mask_path, head_convs=det_convs,
        extra_convs=[c for c in all_convs if c in set(extra_float)],
        float_convs=[c for c in all_convs if c in kept], tail=tail,
        convs=all_convs,
        excluded=[n.name for n in graph.node if n.name in excluded])


def _layer_name(conv) -> str:
    """A Conv node's module, from its weight's name (the exporter names
    initializers after the parameters: ``bbox_head.conv_cls.weight``)."""
    weight = conv.input[1] if len(conv.input) > 1 else ''
    return weight[:-len('.weight')] if weight.endswith('.weight') \
        else conv.name


def _layers(names: Sequence[str], layers: dict) -> str:
    """'module xN, ...' for Conv node names (a head's levels share one
    module)."""
    counts = Counter(layers.get(n, n) for n in names)
    return ', '.join(f'{k} x{v}' if v > 1 else k for k, v in counts.items())


NORM_OPS = ('InstanceNormalization', 'LayerNormalization',
            'BatchNormalization')


def norm_nodes(model) -> List[str]:
    """The normalization steps (GroupNorm as exported: Reshape,
    InstanceNormalization, Reshape, Mul, Add): each normalization node, the
    Reshape before it and the Reshape / Mul / Add chain after it."""
    graph = model.graph
    producer = _producers(graph)
    users: Dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    found = set()
    for node in graph.node:
        if node.op_type not in NORM_OPS:
            continue
        found.add(node.name)
        before = producer.get(node.input[0])
        if before is not None and before.op_type == 'Reshape':
            found.add(before.name)
        current = node
        while True:
            after = users.get(current.output[0], [])
            if len(after) != 1 or after[0].op_type not in (
                    'Reshape', 'Mul', 'Add'):
                break
            current = after[0]
            found.add(current.name)
    return [n.name for n in graph.node if n.name in found]


def name_nodes(model) -> None:
    """Gives every unnamed node a unique name (the quantizers' exclusion
    lists are by name)."""
    names = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f'{node.op_type}_{i}'
            while name in names:
                name += '_'
            node.name = name
            names.add(name)


def _remove_dead(model) -> None:
    """Nodes whose outputs nobody reads (and are no graph output), then
    initializers nobody reads."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node
                if not any(o in read for o in n.output if o)]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    read = {name for n in graph.node for name in n.input} | outputs
    for init in [i for i in graph.initializer if i.name not in read]:
        graph.initializer.remove(init)


def isolate_float_nodes(model, excluded: Sequence[str], source=None) -> int:
    """Excluded nodes read float tensors:

    - an activation they read as DequantizeLinear(QuantizeLinear(x)) (a
      pair the quantizers place once on a tensor for all its readers) is
      read as ``x``. Sound because no activation was folded into a pair
      (onnxruntime: ``QDQKeepRemovableActivations``; NNCF folds none);
    - a weight they read as DequantizeLinear(an INT8 initializer) (a
      weight shared with quantized convs, e.g. one level's conv of a head
      shared by the levels) is read from ``source``'s float initializer.

    Pairs and weights nobody reads any more are removed. Returns the
    number of inputs rewired."""
    graph = model.graph
    producer = _producers(graph)
    inits = {i.name for i in graph.initializer}
    originals = {n.name: n for n in source.graph.node} if source else {}
    float_inits = {i.name: i for i in source.graph.initializer} \
        if source else {}
    excluded = set(excluded)
    rewired = 0
    for node in graph.node:
        if node.name not in excluded:
            continue
        for port, name in enumerate(node.input):
            dq = producer.get(name)
            if dq is None or dq.op_type != 'DequantizeLinear':
                continue
            q = producer.get(dq.input[0])
            if q is not None and q.op_type == 'QuantizeLinear':
                node.input[port] = q.input[0]
                rewired += 1
                continue
            original = originals.get(node.name)
            if original is None or port >= len(original.input):
                continue
            weight = original.input[port]
            if weight in float_inits:
                # onnxruntime names a bias's DequantizeLinear output after
                # the bias: the float copy then needs a name of its own
                name = weight
                while name in producer or (name in inits and name != weight):
                    name += '_float'
                if name not in inits:
                    tensor = copy.deepcopy(float_inits[weight])
                    tensor.name = name
                    graph.initializer.append(tensor)
                    inits.add(name)
                node.input[port] = name
                rewired += 1
    _remove_dead(model)
    return rewired


def qdq_summary(model, region: dict) -> dict:
    """In a QDQ model: the Convs that read an INT8 weight (quantized), the
    rest, and the excluded nodes that read a Q/DQ output (none after
    :func:`isolate_float_nodes`)."""
    graph = model.graph
    producer = _producers(graph)

    def reads_qdq(node, ports):
        return any(p < len(node.input) and node.input[p] in producer and
                   producer[node.input[p]].op_type in QDQ_OPS
                   for p in ports)

    convs = [n for n in graph.node if n.op_type == 'Conv']
    quantized = [n.name for n in convs if reads_qdq(n, (1,))]
    excluded = set(region['excluded'])
    leaks = [n.name for n in graph.node if n.name in excluded and
             reads_qdq(n, range(len(n.input)))]
    return dict(quantized_convs=quantized,
                float_convs=[n.name for n in convs
                             if n.name not in set(quantized)],
                excluded_reading_qdq=leaks)


# ------------------------------------------------------------- calibration
def _list_images(folder: str) -> List[str]:
    from ..utils.image_io import IMG_EXTENSIONS
    return sorted(osp.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMG_EXTENSIONS))


def calibration_images(config=None, calib_dir: Optional[str] = None
                       ) -> List[str]:
    """Image files for calibration: ``calib_dir``'s images, or else the
    config's train split (``train_dataloader.dataset``: the images its
    COCO ann_file lists under data_root / data_prefix.img, or that
    folder's images)."""
    from ..utils.image_io import IMG_EXTENSIONS
    if calib_dir is not None:
        if not osp.isdir(calib_dir):
            raise QuantizeError(
                f'--calib-dir {calib_dir!r}: no such folder; pass a folder '
                'of calibration images (a few dozen training images), or '
                'leave it out to use the config\'s train split')
        files = _list_images(calib_dir)
        if not files:
            raise QuantizeError(
                f'--calib-dir {calib_dir!r} holds no images '
                f'({", ".join(IMG_EXTENSIONS)}); pass a folder of training '
                'images')
        return files
    if config is None:
        raise QuantizeError('no calibration images: pass --calib-dir DIR, '
                            'or a CONFIG whose train_dataloader names its '
                            'images')
    dataset = _train_dataset(config)
    data_root = dataset.get('data_root') or ''
    prefix = (dataset.get('data_prefix') or {}).get('img', '') or ''
    img_dir = osp.join(data_root, prefix)
    ann_file = dataset.get('ann_file')
    files = []
    if ann_file:
        path = ann_file if osp.isabs(ann_file) else osp.join(data_root,
                                                             ann_file)
        if osp.isfile(path):
            with open(path) as f:
                listed = json.load(f).get('images', [])
            files = [osp.join(img_dir, im['file_name']) for im in listed]
            files = [f for f in files if osp.isfile(f)]
    if not files and osp.isdir(img_dir):
        files = _list_images(img_dir)
    if not files:
        raise QuantizeError(
            f'the config\'s train split ({ann_file or "no ann_file"}, '
            f'images under {img_dir!r}) has no images here; pass --calib-dir '
            'DIR, or run from the directory that its data_root is relative '
            'to')
    return files


def _load_config(config):
    from mmengine.config import Config
    if config is None or isinstance(config, Config):
        return config
    if not osp.isfile(str(config)):
        raise QuantizeError(f'CONFIG {config!r}: no such file')
    return Config.fromfile(config)


def _train_dataset(config) -> dict:
    cfg = _load_config(config)
    dataset = cfg.get('train_dataloader', {}).get('dataset', {})
    # wrappers (RepeatDataset, ConcatDataset, ...) hold the real one
    while 'dataset' in dataset or 'datasets' in dataset:
        dataset = dataset.get('dataset') or dataset['datasets'][0]
    return dataset


def sample_images(files: Sequence, num_images: int, seed: int = 0
                  ) -> list:
    """``num_images`` of ``files`` (all of them when fewer): a seeded
    random sample, in file order."""
    if int(num_images) <= 0:
        raise QuantizeError(f'--num-images {num_images}: must be > 0')
    if len(files) <= num_images:
        return list(files)
    keep = sorted(random.Random(seed).sample(range(len(files)), num_images))
    return [files[i] for i in keep]


def calibration_feeds(model_file: str, images: Sequence, config=None
                      ) -> List[Dict[str, np.ndarray]]:
    """The graph's inputs for each image, preprocessed as the runtime
    (``EmbedMaskONNXModel``) does: the config's test pipeline, its data
    preprocessor, zero padding up to a fixed-shape graph's size. Images
    keep their own (padded) sizes: ONNX Runtime and NNCF calibrate per
    image. Unreadable files are skipped with a warning."""
    import torch

    from ..utils.image_io import UnreadableImage, read_image
    from .runtime import EmbedMaskONNXModel
    runtime = EmbedMaskONNXModel(model_file, 'onnxruntime',
                                 config=_load_config(config))
    feeds = []
    for item in images:
        path = item if isinstance(item, str) else None
        try:
            img = read_image(item) if path is not None else item
        except UnreadableImage as e:
            warnings.warn(f'calibration: skipped {e}')
            continue
        data = runtime.pipeline(dict(img=img, img_path=path))
        data = dict(inputs=[data['inputs']],
                    data_samples=[data['data_samples']])
        with torch.no_grad():
            data = runtime.data_preprocessor(data, False)
        image = np.ascontiguousarray(data['inputs'][:1].numpy(), np.float32)
        if runtime.fixed_shape is not None:
            height, width = runtime.fixed_shape
            if image.shape[2] > height or image.shape[3] > width:
                raise QuantizeError(
                    f'calibration image {path or "(array)"} is '
                    f'{image.shape[2]}x{image.shape[3]} after the pipeline, '
                    f'larger than the graph\'s fixed {height}x{width}')
            image = np.pad(image, ((0, 0), (0, 0),
                                   (0, height - image.shape[2]),
                                   (0, width - image.shape[3])))
        feed = dict(image=image)
        if runtime.session.feeds_img_shape:
            feed['img_shape'] = np.asarray(
                data['data_samples'][0].img_shape[:2], np.int64)
        feeds.append(feed)
    if not feeds:
        raise QuantizeError('none of the calibration images could be read; '
                            'pass --calib-dir DIR with readable images')
    return feeds


# -------------------------------------------------------------- evaluation
class SegmAP:
    """COCO segm mAP (the config's test dataloader and evaluator) of an
    .onnx run by ``EmbedMaskONNXModel``: ``SegmAP(config)(model_file)``;
    ``indices`` restricts it to those images of the test set (NNCF's
    accuracy control ranks its quantizers on subsets)."""

    def __init__(self, config, backend: str = 'onnxruntime',
                 metric: str = 'coco/segm_mAP') -> None:
        from mmengine.registry import init_default_scope
        from mmengine.runner import Runner
        self.cfg = _load_config(config)
        init_default_scope(self.cfg.get('default_scope', 'mmdet'))
        self.backend, self.metric = backend, metric
        loader = Runner.build_dataloader(self.cfg.test_dataloader)
        self.metainfo = loader.dataset.metainfo
        self.batches = [copy.deepcopy(data) for data in loader]

    def __len__(self) -> int:
        return len(self.batches)

    def __call__(self, model_file: str, indices=None) -> float:
        from mmengine.evaluator import Evaluator

        from .runtime import EmbedMaskONNXModel
        runtime = EmbedMaskONNXModel(model_file, self.backend, config=self.cfg)
        evaluator = Evaluator(self.cfg.test_evaluator)
        evaluator.dataset_meta = self.metainfo
        batches = self.batches if indices is None else \
            [self.batches[int(i)] for i in indices]
        if indices is not None:
            ids = [s.img_id for b in batches for s in b['data_samples']]
            for metric in evaluator.metrics:
                if hasattr(metric, 'img_ids'):  # CocoMetric: only these
                    metric.img_ids = ids
        count = 0
        for data in batches:
            # copied: a runtime's outputs may be views of its buffers, which
            # the next inference overwrites (CocoMetric keeps views of them)
            samples = copy.deepcopy(runtime.predict_batch(copy.deepcopy(data)))
            evaluator.process(data_samples=samples, data_batch=data)
            count += len(samples)
        return float(evaluator.evaluate(count)[self.metric])


# ----------------------------------------------------------- the backends
def _quantize_nncf(model, feeds, excluded, options: dict, validate=None,
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


def _quantize_ort(model, feeds, excluded, options: dict, tmp: str):
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


def _set_metadata(model, meta: dict, summary: Optional[dict] = None):
    entries = dict(meta)
    if summary is not None:
        entries[META_QUANTIZATION] = json.dumps(summary, sort_keys=True)
    del model.metadata_props[:]
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _noisiest_convs(model, qmodel, feeds, skip: Sequence[str], count: int
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


# ------------------------------------------------------------------ API
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
    path and the decoding tail in float (module docstring).

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
        reduce_range (bool): onnxruntime: 7-bit weights (module
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
                qmodel = _quantize_nncf(
                    model, feeds, region['excluded'], options, validate,
                    max_drop, len(eval_fn) if hasattr(eval_fn, '__len__')
                    else 1)
            else:
                qmodel = _quantize_ort(model, feeds, region['excluded'],
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
            extra += _noisiest_convs(
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
        mask_path_layers=_layers(region['mask_convs'], region['layers']),
        head_layers=_layers(region['head_convs'], region['layers']),
        extra_float_layers=_layers(region['extra_convs'], region['layers']),
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
