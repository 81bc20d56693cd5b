"""INT8 post-training quantization (``embedmask_mmdet.deploy.quantize``,
``tools/deployment/quantize.py``) of the model of the bf16 tests
(``overfit`` in tests/conftest.py: a tiny EmbedMask trained 150 iterations
on 8 generated 128-px images, tested on them, exported once per session),
with each quantizer (NNCF, onnxruntime) and each runtime.

What is checked:

- the mask path is not quantized: no QuantizeLinear / DequantizeLinear
  output feeds any excluded node (the mask path's convs, the decoding
  tail), the mask-path convs read float weights, and everything between
  them and the mask outputs reads float;
- INT8 against fp32 (the same .onnx in float, by ONNX Runtime), by the
  bf16 tests' rule (``test_reduced_precision.agreement``): COCO AP within
  that module's ``ap_tolerance`` (the user bar of 0.005 AP plus three steps
  of this 8-image set's granularity, 0.022), the confident fp32
  detections (score >= 0.3) found again (same label, box IoU >= 0.9), and
  their masks' IoU. A user keeps a model whose AP holds and whose drawn
  masks look the same, so the mask bounds are the bf16 ones (>= 90 %
  matched, mean IoU >= 0.95, >= 85 % of masks at IoU >= 0.9). Measured on
  an AVX2-only AMD EPYC with two trainings of the model (the torch thread
  count changes it), every quantizer x runtime: mean IoU 0.980-0.985,
  99-100 % at >= 0.9. The bounds caught what the defaults avoid: NNCF's
  bias correction with its per-image-mean ranges (mean 0.84, 48 % at
  >= 0.9) and onnxruntime rounding the GroupNorm steps (0.947, 81 %).
  CPU kinds: the onnxruntime quantizer writes 7-bit weights
  (``reduce_range``), so its integer convs are exact on AVX2, AVX-512,
  VNNI and AMX alike; NNCF's model under OpenVINO can saturate on CPUs
  without VNNI (only its first conv has 7-bit weights) and is exact with
  VNNI / AMX, so AVX2 is its worst case. The float parts differ between
  CPUs by float rounding only;
- calibration images of different sizes (the graph is dynamic), both
  quantizers;
- accuracy control (NNCF's, and the onnxruntime greedy fallback that
  reports failure), and the messages of the errors a user can cause.
"""
import copy
import json
import os.path as osp

import pytest

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')
pytest.importorskip('nncf')

from test_reduced_precision import (MIN_MATCHED, MIN_MEAN_IOU,  # noqa: E402
                                    MIN_SCORE, MIN_SHARE_AT_090, agreement,
                                    ap, ap_tolerance)

from embedmask_mmdet.deploy import EmbedMaskONNXModel, evaluate  # noqa: E402
from embedmask_mmdet.deploy.quantize import (  # noqa: E402
    META_QUANTIZATION, QDQ_OPS, QuantizeError, SegmAP, calibration_images,
    float_region, load_model, quantize_onnx)

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIG = osp.join(ROOT,
                  'configs/embedmask/embedmask_r18_fpn_1xb4-3k_synthetic.py')


@pytest.fixture(scope='module')
def int8(overfit, tmp_path_factory):
    """The export quantized by each quantizer, calibrated on the 8 train
    images plus 4 of them cut to other sizes (160x96 and 96x160 before the
    pipeline: differently padded inputs)."""
    import mmcv
    base = tmp_path_factory.mktemp('int8')
    files = calibration_images(overfit['cfg'])
    images = [mmcv.imread(f) for f in files]
    images += [mmcv.imresize(img, (96, 160)) for img in images[:2]]
    images += [mmcv.imresize(img, (160, 96)) for img in images[2:4]]
    out = {}
    for backend in ('openvino', 'onnxruntime'):
        path = str(base / f'{backend}.onnx')
        summary = quantize_onnx(overfit['onnx'], path, images,
                                backend=backend, num_images=len(images),
                                config=overfit['cfg'])
        out[backend] = dict(path=path, summary=summary)
    return out


@pytest.mark.slow
def test_float_region_is_the_mask_path(overfit):
    """The walk finds the pixel branch's prediction conv and the proposal
    embedding / margin convs of every level, and nothing else, as the mask
    path; the class / box / centerness convs as the other head convs; the
    decoding tail holds NMS and no Conv."""
    model = load_model(overfit['onnx'])
    region = float_region(model)
    nodes = {n.name: n for n in model.graph.node}
    weight = {name: nodes[name].input[1] for name in region['convs']}
    levels = len(overfit['cfg'].model.bbox_head.strides)
    mask = sorted(weight[c] for c in region['mask_convs'])
    assert mask == sorted(
        ['mask_head.pixel_branch.conv_pred.weight'] +
        ['bbox_head.embedding_head.embed_conv.weight'] * levels +
        ['bbox_head.embedding_head.margin_conv.weight'] * levels), mask
    heads = sorted(weight[c].split('.')[1] for c in region['head_convs'])
    assert heads == sorted(['conv_cls', 'conv_reg', 'conv_centerness']
                           * levels), heads
    tail_ops = {nodes[n].op_type for n in region['tail']}
    assert 'NonMaxSuppression' in tail_ops and 'Conv' not in tail_ops
    assert set(region['mask_outputs']) == {
        o.name for o in model.graph.output} - {'dets', 'labels'}
    assert set(region['float_convs']) == set(region['mask_convs'])
    assert set(float_region(model, head_convs='float')['float_convs']) == \
        set(region['mask_convs']) | set(region['head_convs'])


@pytest.mark.slow
@pytest.mark.parametrize('backend', ['openvino', 'onnxruntime'])
def test_mask_path_stays_float(overfit, int8, backend):
    import onnx
    path, summary = int8[backend]['path'], int8[backend]['summary']
    model = onnx.load(path)
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}

    def from_qdq(name):
        return name in producer and producer[name].op_type in QDQ_OPS

    excluded = set(summary['excluded_nodes'])
    assert excluded and summary['excluded_reading_qdq'] == []
    for node in graph.node:
        if node.name in excluded:
            assert not any(from_qdq(i) for i in node.input), node.name
    # the mask-path convs: float weights, float inputs
    for name in summary['mask_path_convs']:
        node = next(n for n in graph.node if n.name == name)
        assert node.input[1] in inits, name
    # every node from the mask outputs back to the last convs (the
    # detection convs, met through NMS's indices, read INT8)
    stack, seen = list(summary['mask_outputs']), set()
    mask_convs = set(summary['mask_path_convs'])
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        assert node.op_type not in QDQ_OPS, node.name
        if node.op_type == 'Conv':
            assert node.name in mask_convs or \
                node.name in summary['head_convs'], node.name
            if node.name in mask_convs:
                assert not any(from_qdq(i) for i in node.input), node.name
            continue
        assert not any(from_qdq(i) for i in node.input), node.name
        stack.extend(i for i in node.input if i)
    assert mask_convs <= seen
    # the rest is INT8: every conv but the mask path's
    assert summary['quantized_convs'] == \
        summary['convs'] - len(summary['mask_path_convs'])
    assert summary['calibration_images'] == 12
    # metadata: the export's, plus what was done
    meta = {p.key: p.value for p in model.metadata_props}
    source = {p.key: p.value
              for p in onnx.load(overfit['onnx']).metadata_props}
    assert all(meta[k] == v for k, v in source.items())
    stored = json.loads(meta[META_QUANTIZATION])
    assert stored['quantized_convs'] == summary['quantized_convs']
    assert stored['excluded_nodes'] == summary['excluded_nodes']
    # the outputs (their names and order tell the runtime the contract)
    assert [o.name for o in graph.output] == \
        [o.name for o in onnx.load(overfit['onnx']).graph.output]


def collecting(step, out: list):
    """``step`` (a predict_batch) whose results are copied at once, kept
    in ``out`` and handed on: CocoMetric keeps views of the results, and
    before 775d90b the runtime's compact OpenVINO outputs were views of
    buffers the next inference overwrote; this module is about the INT8
    numbers, whatever the runtime copies."""
    def run(data):
        results = copy.deepcopy(step(data))
        out.extend(copy.deepcopy(results))
        return results
    return run


@pytest.fixture(scope='module')
def fp32_onnx(overfit):
    """The fp32 export by ONNX Runtime: AP and results (the reference)."""
    runtime = EmbedMaskONNXModel(overfit['onnx'], 'onnxruntime',
                                 config=overfit['cfg'])
    results = []
    metrics = evaluate(overfit['cfg'],
                       collecting(runtime.predict_batch, results))
    return ap(metrics), results


@pytest.mark.slow
@pytest.mark.parametrize('backend,runtime', [
    ('openvino', 'openvino'), ('openvino', 'onnxruntime'),
    ('onnxruntime', 'onnxruntime'), ('onnxruntime', 'openvino')])
def test_int8_matches_fp32(overfit, int8, fp32_onnx, backend, runtime):
    """Each quantizer's model on each runtime against fp32: the bf16
    tests' criteria (module docstring)."""
    ref_ap, refs = fp32_onnx
    model = EmbedMaskONNXModel(int8[backend]['path'], runtime,
                               config=overfit['cfg'])
    gots = []
    got_ap = ap(evaluate(overfit['cfg'],
                         collecting(model.predict_batch, gots)))
    tol = ap_tolerance(overfit['per_class'])
    fig = agreement(refs, gots)
    print(f'INT8 {backend} on {runtime}: AP fp32 {ref_ap} INT8 {got_ap} '
          f'(tolerance {tol:.4f}); >= {MIN_SCORE}: {fig["matched"]} '
          f'matched, {fig["unmatched"]} unmatched, mask IoU mean '
          f'{fig["mean_iou"]:.4f} min {fig["min_iou"]:.4f}, '
          f'{fig["share_at_090"]:.3f} at >= 0.9')
    assert ref_ap['segm'] > 0.05 and fig['matched'] >= 50, (ref_ap, fig)
    for key in ('bbox', 'segm'):
        assert abs(got_ap[key] - ref_ap[key]) <= tol, (key, ref_ap, got_ap)
    assert fig['matched_share'] >= MIN_MATCHED, fig
    assert fig['mean_iou'] >= MIN_MEAN_IOU, fig
    assert fig['share_at_090'] >= MIN_SHARE_AT_090, fig


@pytest.mark.slow
def test_accuracy_control(overfit, tmp_path):
    """--max-ap-drop: NNCF's accuracy control returns at once when the
    quantized model is within the bound; the onnxruntime fallback keeps
    more convs float each round and reports failure, with the figures,
    when the bound cannot be met (here: a negative drop)."""
    segm = SegmAP(overfit['cfg'], 'onnxruntime')
    images = calibration_images(overfit['cfg'])
    out = str(tmp_path / 'ac.onnx')
    summary = quantize_onnx(overfit['onnx'], out, images, backend='openvino',
                            max_drop=0.05, eval_fn=segm,
                            config=overfit['cfg'])
    assert 'failed' not in summary
    assert summary['fp32_segm_ap'] - summary['int8_segm_ap'] <= 0.05
    # a subset of the test set evaluates only those images
    assert 0. <= segm(overfit['onnx'], [0, 1]) <= 1.
    summary = quantize_onnx(overfit['onnx'], out, images,
                            backend='onnxruntime', max_drop=-1.,
                            eval_fn=segm, config=overfit['cfg'],
                            max_rounds=1)
    assert len(summary['rounds']) == 2
    # one more float conv (its weight, shared with the other levels' INT8
    # convs, read in float), and still no float node reading Q/DQ
    assert summary['rounds'][1]['float_convs'] == \
        summary['rounds'][0]['float_convs'] + 1
    assert len(summary['extra_float_convs']) == 1
    assert summary['excluded_reading_qdq'] == []
    assert 'segm AP drop' in summary['failed'] and \
        '--max-ap-drop -1.0' in summary['failed']


def _tool(argv):
    """tools/deployment/quantize.py in-process: its exit message."""
    from deployment.quantize import main
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return str(exc.value.code)


def test_errors_name_the_option(tmp_path):
    """What a user can get wrong: each message names the option or
    argument and says what to do."""
    import onnx
    from onnx import TensorProto, helper
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = str(tmp_path / 'out.onnx')
    model = str(tmp_path / 'missing.onnx')
    msg = _tool([CONFIG, model, '--out', out, '--backend', 'tflite'])
    assert '--backend' in msg and 'openvino' in msg and 'onnxruntime' in msg
    msg = _tool([CONFIG, model, '--out', out, '--calib-dir',
                 str(tmp_path / 'nowhere')])
    assert '--calib-dir' in msg and 'no such folder' in msg
    msg = _tool([CONFIG, model, '--out', out, '--calib-dir', str(empty)])
    assert '--calib-dir' in msg and 'no images' in msg
    (empty / 'a.png').write_bytes(b'')
    msg = _tool([CONFIG, model, '--out', out, '--calib-dir', str(empty)])
    assert 'MODEL' in msg and 'export_onnx.py' in msg
    msg = _tool([str(tmp_path / 'nope.py'), model, '--out', out])
    assert 'CONFIG' in msg and 'no such file' in msg
    # an ONNX model that is not an EmbedMask export
    graph = helper.make_graph(
        [helper.make_node('Relu', ['x'], ['y'], name='relu')], 'g',
        [helper.make_tensor_value_info('x', TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info('y', TensorProto.FLOAT, [1])])
    other = str(tmp_path / 'other.onnx')
    onnx.save(helper.make_model(graph), other)
    with pytest.raises(QuantizeError, match='not an fp32 EmbedMask export'):
        load_model(other)
    msg = _tool([CONFIG, other, '--out', out, '--calib-dir', str(empty)])
    assert 'MODEL' in msg and 'not an fp32 EmbedMask export' in msg and \
        'embedmask.config' in msg
    (tmp_path / 'junk.onnx').write_bytes(b'not a model')
    with pytest.raises(QuantizeError, match='is not an ONNX file'):
        load_model(str(tmp_path / 'junk.onnx'))
    with pytest.raises(QuantizeError, match='--num-images'):
        quantize_onnx(other, out, ['a.png'], num_images=0)
    with pytest.raises(QuantizeError, match='--max-ap-drop needs'):
        quantize_onnx(other, out, ['a.png'], max_drop=0.01)


def test_calibration_images_from_the_train_split(tmp_path):
    """Without --calib-dir: the images the train split's ann_file lists,
    under data_root / data_prefix.img; a missing split says what to do."""
    from mmengine.config import Config
    root = tmp_path / 'data'
    (root / 'train').mkdir(parents=True)
    (root / 'annotations').mkdir()
    for name in ('b.jpg', 'a.jpg', 'unlisted.jpg'):
        (root / 'train' / name).write_bytes(b'x')
    (root / 'annotations' / 'train.json').write_text(json.dumps(dict(
        images=[dict(id=1, file_name='b.jpg'), dict(id=2, file_name='a.jpg'),
                dict(id=3, file_name='gone.jpg')])))
    cfg = Config(dict(train_dataloader=dict(dataset=dict(
        type='RepeatDataset', times=2, dataset=dict(
            data_root=str(root) + '/', ann_file='annotations/train.json',
            data_prefix=dict(img='train/'))))))
    files = calibration_images(cfg)
    assert [osp.basename(f) for f in files] == ['b.jpg', 'a.jpg']
    cfg.train_dataloader.dataset.dataset.ann_file = 'annotations/none.json'
    assert len(calibration_images(cfg)) == 3  # the folder's images
    cfg.train_dataloader.dataset.dataset.data_root = str(tmp_path / 'no')
    with pytest.raises(QuantizeError, match='--calib-dir'):
        calibration_images(cfg)
