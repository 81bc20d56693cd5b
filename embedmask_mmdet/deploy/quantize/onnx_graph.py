"""The exported graph, read and edited for INT8 (the package docstring):
the float region found by walking back from the outputs, the
normalization steps, node names, and the float nodes cut loose from the
quantizers' shared Q/DQ pairs and INT8 weights."""
import copy
import os.path as osp
from collections import Counter
from typing import Dict, List, Sequence, Tuple

HEAD_CONVS = ('int8', 'float')
MASK_CONVS = ('float', 'int8')
DETECTION_OUTPUTS = ('dets', 'labels')
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
    """What stays float (the package docstring).

    Args:
        model (onnx.ModelProto): The exported graph (nodes named: see
            :func:`name_nodes`).
        head_convs (str): 'int8': the class / box / centerness prediction
            convs read INT8 inputs (their outputs are float); 'float'.
        mask_convs (str): 'float' (the point of this package); 'int8'
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


def layers_text(names: Sequence[str], layers: dict) -> str:
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

