"""bf16 inference against fp32: PyTorch (``EmbedMaskInferencer(amp=True,
channels_last=True)``, bf16 CPU autocast) and OpenVINO
(``INFERENCE_PRECISION_HINT='bf16'``), judged by what a user of the model
needs, with bounds that hold on every CPU kind CI and users get.

bf16 results depend on the CPU's bf16 units: AMX tiles, AVX512-BF16 dot
products, or none (oneDNN emulates bf16 with AVX2/AVX-512 float32 code,
e.g. under ``ONEDNN_MAX_CPU_ISA=AVX2``). The kernels round and accumulate
differently, so boundary pixels and near-threshold scores differ from one
CPU to another; a bound tuned on one machine's figures fails on another
(the earlier bound, >= 95 % of masks at IoU >= 0.98 over detections above
0.1 of a 40-iteration model, measured 88 % on an AMX Xeon). Here:

- the model is trained far enough to have real AP (``overfit`` in
  tests/conftest.py, shared with the INT8 tests: 150 iterations, tested
  on its 8 training images: segm AP ~0.14, box AP ~0.37 in fp32), because a
  barely trained model's soft masks (p near 0.5 over wide areas) turn
  every rounding into pixels that no user would ever see;
- the criteria are a user's: COCO AP (mmdet's CocoMetric) within the user
  bar of 0.005 plus this set's granularity (see ``ap_tolerance``), the
  confident detections (score >= 0.3, the benchmark's threshold) found
  again, and their masks nearly the same (mean IoU; share at IoU >= 0.9, not
  0.98: on 128-px images one pixel of a 70-pixel mask is 0.014 IoU);
- PyTorch and OpenVINO are held to the same criteria against the same
  reference (PyTorch fp32). PyTorch bf16 must also keep the mean mask IoU
  >= 0.98 that its float32 islands (``models/utils/precision.py``) buy.
  Measured (AMD EPYC, AVX512-BF16): 0.993 with them; 0.973 and 0.980 in two
  runs without them, so this bound catches a removed island only sometimes;
  tests/test_models/test_dense_heads/test_float32_islands.py catches it
  always (each island's output under autocast against autocast off).
  OpenVINO runs the whole graph in bf16 (its CPU plugin offered no per-layer
  float32 through the Python API here; the ``disable_fp16_compression``
  rt_info had no effect in 2026.4) and measured 0.963-0.982: it gets the
  shared criteria only. Under ``ONEDNN_MAX_CPU_ISA=AVX2`` OpenVINO still
  reports BF16 but cannot compile bf16 (its oneDNN honours the cap):
  ``openvino_has_bf16()`` says no there, as on a CPU without bf16, and the
  OpenVINO case skips (tests/test_deploy/test_openvino_capability.py).
"""
import copy
from collections import Counter

import numpy as np
import pytest
import torch

pytest.importorskip('onnxruntime')
pytest.importorskip('openvino')

from test_onnx_parity import mask_iou  # noqa: E402

from embedmask_mmdet.deploy import EmbedMaskONNXModel, evaluate  # noqa

pytestmark = pytest.mark.slow  # make test-fast skips it

MIN_SCORE = 0.3  # the confident detections a user draws or keeps
# shared criteria (PyTorch bf16 and OpenVINO bf16 against PyTorch fp32)
MIN_MATCHED = 0.9  # of the confident fp32 detections, found again in bf16
MIN_MEAN_IOU = 0.95  # their masks' mean IoU
MIN_SHARE_AT_090 = 0.85  # share of their masks at IoU >= 0.9
# PyTorch only: what its float32 islands guarantee (0.973 without them)
MIN_MEAN_IOU_ISLANDS = 0.98


def ap_tolerance(per_class: Counter) -> float:
    """The user bar (0.005 AP, what a COCO-sized val set resolves) plus
    three steps of this set's granularity: mAP averages 10 IoU thresholds
    and the classes, so one instance of a class with n instances crossing
    one threshold (a boundary pixel, a box corner) moves it by up to
    1 / (10 x classes x n). Here (50 instances, the rarest class 3) that is
    0.0056 a step, 0.022 in all."""
    step = 1. / (10 * len(per_class) * min(per_class.values()))
    return 0.005 + 3 * step


def collecting(step, out: list):
    """``step`` (a test_step) that also appends its results to ``out``."""
    def run(data):
        results = step(data)
        out.extend(copy.deepcopy(results))
        return results
    return run


def agreement(refs, gots) -> dict:
    """fp32 detections above MIN_SCORE matched to a bf16 detection of the
    same label with box IoU >= 0.9 (the best such); the matched share and
    the matched masks' IoUs."""
    from mmdet.structures.bbox import bbox_overlaps
    ious, unmatched = [], 0
    for ref, got in zip(refs, gots):
        assert ref.img_path == got.img_path
        r, g = ref.pred_instances, got.pred_instances
        r = r[r.scores >= MIN_SCORE]
        if len(r) == 0:
            continue
        if len(g) == 0:
            unmatched += len(r)
            continue
        overlaps = bbox_overlaps(r.bboxes, g.bboxes.float())
        overlaps = torch.where(r.labels[:, None] == g.labels[None],
                               overlaps, 0.)
        for i, (best, j) in enumerate(zip(*overlaps.max(dim=1))):
            if best < 0.9:
                unmatched += 1
            else:
                ious.append(mask_iou(r.masks[i], g.masks[j].bool()))
    ious = np.array(ious)
    return dict(matched=len(ious), unmatched=unmatched,
                matched_share=len(ious) / max(1, len(ious) + unmatched),
                mean_iou=float(ious.mean()) if len(ious) else 0.,
                min_iou=float(ious.min()) if len(ious) else 0.,
                share_at_090=float((ious >= 0.9).mean()) if len(ious) else 0.)


def ap(metrics: dict) -> dict:
    return {k: float(metrics[f'coco/{k}_mAP']) for k in ('bbox', 'segm')}


def check_bf16(what, overfit, ref_ap, refs, got_ap, gots):
    """The shared criteria; returns the agreement figures."""
    tol = ap_tolerance(overfit['per_class'])
    fig = agreement(refs, gots)
    print(f'{what}: AP fp32 {ref_ap} bf16 {got_ap} (tolerance {tol:.4f}); '
          f'>= {MIN_SCORE}: {fig["matched"]} matched, {fig["unmatched"]} '
          f'unmatched, mask IoU mean {fig["mean_iou"]:.4f} min '
          f'{fig["min_iou"]:.4f}, {fig["share_at_090"]:.3f} at >= 0.9')
    # a real test: the fp32 model detects and segments
    assert ref_ap['segm'] > 0.05 and fig['matched'] >= 50, (ref_ap, fig)
    for key in ('bbox', 'segm'):
        assert abs(got_ap[key] - ref_ap[key]) <= tol, (what, key, ref_ap,
                                                      got_ap, tol)
    assert fig['matched_share'] >= MIN_MATCHED, (what, fig)
    assert fig['mean_iou'] >= MIN_MEAN_IOU, (what, fig)
    assert fig['share_at_090'] >= MIN_SHARE_AT_090, (what, fig)
    return fig


@pytest.fixture(scope='module')
def fp32_run(overfit):
    """PyTorch fp32 through EmbedMaskInferencer: AP and the results."""
    from embedmask_mmdet.apis import EmbedMaskInferencer
    fp32 = EmbedMaskInferencer(model=overfit['config'],
                               weights=overfit['ckpt'], device='cpu',
                               show_progress=False)
    results = []
    metrics = evaluate(overfit['cfg'], collecting(fp32.forward, results))
    return ap(metrics), results


def test_pytorch_bf16_amp_channels_last(overfit, fp32_run):
    """EmbedMaskInferencer(amp=True, channels_last=True): the shared
    criteria, and the mean mask IoU its float32 islands keep."""
    from embedmask_mmdet.apis import EmbedMaskInferencer
    fast = EmbedMaskInferencer(model=overfit['config'],
                               weights=overfit['ckpt'], device='cpu',
                               show_progress=False, amp=True,
                               channels_last=True)
    assert fast.model.channels_last
    results = []
    # forward: the model's test_step under the inferencer's bf16 autocast
    got_ap = ap(evaluate(overfit['cfg'], collecting(fast.forward, results)))
    fig = check_bf16('PyTorch bf16', overfit, *fp32_run, got_ap, results)
    assert fig['mean_iou'] >= MIN_MEAN_IOU_ISLANDS, fig


def test_openvino_bf16(overfit, fp32_run):
    """The exported graph by OpenVINO with INFERENCE_PRECISION_HINT bf16:
    the shared criteria against PyTorch fp32."""
    from embedmask_mmdet.deploy.runtime import openvino_has_bf16
    if not openvino_has_bf16():
        pytest.skip('OpenVINO cannot run bf16 here (no BF16 capability, or '
                    'ONEDNN_MAX_CPU_ISA below AVX512_CORE)')
    runtime = EmbedMaskONNXModel(overfit['onnx'], 'openvino',
                                 config=overfit['cfg'], precision='bf16')
    results = []
    got_ap = ap(evaluate(overfit['cfg'],
                         collecting(runtime.predict_batch, results)))
    check_bf16('OpenVINO bf16', overfit, *fp32_run, got_ap, results)
