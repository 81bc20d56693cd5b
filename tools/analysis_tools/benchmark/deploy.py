"""Deployment section of ``make bench``: end-to-end CPU latency of EmbedMask
in PyTorch (fp32 NCHW, channels_last, channels_last + bf16 autocast) and
exported (ONNX Runtime fp32, OpenVINO fp32 and bf16 where the CPU has bf16
units), each as a ratio to PyTorch fp32 measured in the same run; COCO AP of
the exported demo model on the built-in val split; bf16 mask agreement; and
the achieved GFLOP/s of the best path beside the machine's peak estimate.

End to end: a decoded image array in, ``DetDataSample`` out with masks at
the original size (test pipeline, preprocessing, network, NMS, masks).
Speed rows keep ``score_thr=0`` so every path decodes ``max_per_img`` (100)
masks; accuracy rows use the config's own test_cfg.
"""
import copy
import os
import os.path as osp
import statistics
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import torch
from mmengine.config import Config

from .machine import (ROOT, command_line, load_average, log, machine_info,
                      peak_gflops, repo_path)

CASES = {
    'EmbedMask R-50': dict(
        config='configs/embedmask/embedmask_r50-caffe_fpn_8xb2-ms-1x_coco.py',
        size=(800, 1333), warmup=1, reps=3),
    'EmbedMask-Lite': dict(
        config='configs/embedmask/embedmask-lite0_fpn_1xb4-1300it_synthetic.py',
        size=(320, 320), warmup=2, reps=10),
}
DEMO_CONFIG = CASES['EmbedMask-Lite']['config']


# -------------------------------------------------------------------- models
def load_cfg(config: str, speed: bool) -> Config:
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.model.backbone.init_cfg = None  # no download; weights: random/ckpt
    if speed:
        cfg.model.test_cfg.score_thr = 0.
    return cfg


def build(cfg: Config, checkpoint=None, channels_last=False):
    from mmdet.apis import init_detector
    from embedmask_mmdet.apis import use_channels_last
    model = init_detector(cfg, checkpoint, device='cpu')
    if channels_last:
        use_channels_last(model)
    return model.eval()


def pytorch_path(model, amp: bool):
    from mmdet.apis import inference_detector

    def run(img):
        with torch.autocast('cpu', dtype=torch.bfloat16) if amp \
                else nullcontext():
            return inference_detector(model, img)
    return run


def conv_gflop(model, img) -> float:
    """FLOPs (2 per multiply-add) of every conv and linear layer in one
    forward on ``img``, in GFLOP."""
    from mmdet.apis import inference_detector
    total = [0]

    def hook(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            total[0] += 2 * output.numel() * k * module.in_channels // \
                module.groups
        else:
            total[0] += 2 * output.numel() * module.in_features
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    inference_detector(model, img)
    for h in handles:
        h.remove()
    return total[0] / 1e9


def timed(fn, img, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn(img)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn(img)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def test_image(size, seed=0):
    """A natural-ish BGR image of ``size``: smooth colour fields + noise."""
    import cv2
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 255, (size[0] // 40 + 2, size[1] // 40 + 2, 3))
    img = cv2.resize(low.astype(np.uint8), (size[1], size[0]),
                     interpolation=cv2.INTER_CUBIC)
    return np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)


# --------------------------------------------------------------- the bench
def latency_case(name, case, work_dir, has_bf16, checkpoint=None):
    from embedmask_mmdet.deploy import EmbedMaskONNXModel, export_onnx
    cfg = load_cfg(case['config'], speed=True)
    img = test_image(case['size'])
    warmup, reps = case['warmup'], case['reps']
    rows = {}
    fp32 = build(cfg, checkpoint)
    gflop = conv_gflop(fp32, img)
    log(f'{name}: {gflop:.1f} GFLOP (convs) at {case["size"]}')
    rows['PyTorch fp32 (NCHW)'] = timed(pytorch_path(fp32, False), img,
                                        warmup, reps)
    nhwc = build(cfg, checkpoint, channels_last=True)
    rows['PyTorch channels_last'] = timed(pytorch_path(nhwc, False), img,
                                          warmup, reps)
    rows['PyTorch channels_last + bf16 autocast'] = timed(
        pytorch_path(nhwc, True), img, warmup, reps)
    del nhwc
    onnx_file = osp.join(work_dir, name.replace(' ', '_') + '.onnx')
    start = time.perf_counter()
    export_onnx(cfg, None, onnx_file, model=fp32)
    log(f'{name}: exported in {time.perf_counter() - start:.0f} s')
    paths = [('ONNX Runtime fp32', 'onnxruntime', 'fp32', onnx_file),
             ('OpenVINO fp32', 'openvino', 'fp32', onnx_file)]
    if has_bf16:
        paths.append(('OpenVINO bf16', 'openvino', 'bf16', onnx_file))
    # INT8 by each quantizer, run by the runtime it targets
    calib = [test_image(case['size'], seed=i) for i in range(1, 9)]
    for quantizer, backend, label in INT8_PATHS:
        int8_file = onnx_file.replace('.onnx', f'_int8_{quantizer}.onnx')
        int8(onnx_file, int8_file, calib, quantizer, cfg)
        paths.append((label, backend, 'fp32', int8_file))
    for label, backend, precision, model_file in paths:
        runtime = EmbedMaskONNXModel(model_file, backend, config=cfg,
                                     precision=precision)
        rows[label] = timed(runtime, img, warmup, reps)
        del runtime
    for label, sec in rows.items():
        log(f'{name}: {label}: {sec:.3f} s')
    base = rows['PyTorch fp32 (NCHW)']
    best = min(rows, key=rows.get)
    return dict(size=list(case['size']), gflop=gflop, reps=reps,
                seconds=rows, ratio={k: v / base for k, v in rows.items()},
                best=best, best_gflops=gflop / rows[best])


def lite_overhead(case, work_dir, checkpoint=None) -> dict:
    """Stage times (``runtime_profile``) of the Lite model's OpenVINO fp32
    call with the dense mask outputs (before) and the compact ones
    (after), at the latency case's settings (100 detections)."""
    from embedmask_mmdet.deploy import export_onnx
    from .runtime_profile import profile
    cfg = load_cfg(case['config'], speed=True)
    compact = osp.join(work_dir, 'EmbedMask-Lite.onnx')
    dense = osp.join(work_dir, 'EmbedMask-Lite_dense.onnx')
    model = build(cfg, checkpoint)
    for out, masks in ((compact, 'compact'), (dense, 'dense')):
        if not osp.isfile(out):
            export_onnx(cfg, None, out, model=model, masks=masks)
    rows = profile([dense, compact], 'openvino', test_image(case['size']),
                   config=cfg, reps=case['reps'], log=log)
    return {row.pop('contract'): row for row in rows.values()}


def large_image_case(checkpoint, data_root, work_dir) -> dict:
    """``large_image.run``: the demo model on the val image with the most
    objects, resized to 4000x3000."""
    import json
    from collections import Counter
    from .large_image import run as large_run
    ann = osp.join(data_root, 'annotations/instances_val.json')
    with open(ann) as f:
        coco = json.load(f)
    counts = Counter(a['image_id'] for a in coco['annotations'])
    busiest = counts.most_common(1)[0][0]
    name = next(i['file_name'] for i in coco['images'] if i['id'] == busiest)
    return large_run(osp.join(ROOT, DEMO_CONFIG), checkpoint,
                     osp.join(data_root, 'val', name),
                     osp.join(work_dir, 'large_image'), log=log)


# (quantizer, runtime, row label): NNCF places its quantizers for
# OpenVINO, ONNX Runtime's quantize_static for ONNX Runtime's kernels
INT8_PATHS = (('openvino', 'openvino', 'OpenVINO INT8 (NNCF)'),
              ('onnxruntime', 'onnxruntime', 'ONNX Runtime INT8'))


def int8(onnx_file: str, out: str, calib_images, quantizer: str,
         cfg) -> dict:
    """``quantize_onnx`` with the defaults the docs recommend; its
    summary."""
    from embedmask_mmdet.deploy.quantize import quantize_onnx
    start = time.perf_counter()
    summary = quantize_onnx(onnx_file, out, calib_images, backend=quantizer,
                            num_images=len(calib_images), config=cfg,
                            verbose=False)
    log(f'INT8 ({quantizer}) {osp.basename(out)} in '
        f'{time.perf_counter() - start:.0f} s')
    return summary


def mask_agreement(ref, got):
    """Mask IoUs of ref's detections above 0.3 matched to got's (same
    label, best box IoU >= 0.9), and the count without a match."""
    from mmdet.structures.bbox import bbox_overlaps
    r, g = ref.pred_instances, got.pred_instances
    r = r[r.scores >= 0.3]
    if len(r) == 0:
        return [], 0
    ov = bbox_overlaps(r.bboxes, g.bboxes) if len(g) else \
        r.bboxes.new_zeros((len(r), 1))
    if len(g):
        ov = torch.where(r.labels[:, None] == g.labels[None], ov, 0.)
    ious, missed = [], 0
    for i, (best, j) in enumerate(zip(*ov.max(dim=1))):
        if best < 0.9:
            missed += 1
            continue
        inter = (r.masks[i] & g.masks[j]).sum().item()
        union = (r.masks[i] | g.masks[j]).sum().item()
        ious.append(1. if union == 0 else inter / union)
    return ious, missed


def accuracy_case(checkpoint, data_root, work_dir, has_bf16):
    """AP of the demo checkpoint: PyTorch fp32 and bf16, the export by ORT
    and OpenVINO; bf16 mask agreement with fp32 on the val images."""
    from mmdet.utils import register_all_modules
    from embedmask_mmdet.deploy import (EmbedMaskONNXModel, evaluate,
                                        export_onnx)
    register_all_modules()
    cfg = load_cfg(DEMO_CONFIG, speed=False)
    cfg.test_dataloader.dataset.data_root = data_root
    cfg.test_evaluator.ann_file = osp.join(
        data_root, 'annotations/instances_val.json')
    for key in ('num_workers', 'persistent_workers'):
        cfg.test_dataloader.pop(key, None)
    model = build(cfg, checkpoint)
    onnx_file = osp.join(work_dir, 'demo.onnx')
    export_onnx(cfg, checkpoint, onnx_file, model=model)
    out = {}

    def ap(metrics):
        return {k.split('/')[-1]: float(v) for k, v in metrics.items()
                if k in ('coco/segm_mAP', 'coco/bbox_mAP')}

    out['PyTorch fp32'] = ap(evaluate(cfg, model.test_step))
    nhwc = build(cfg, checkpoint, channels_last=True)

    def bf16_step(data):
        with torch.autocast('cpu', dtype=torch.bfloat16):
            return nhwc.test_step(data)
    out['PyTorch channels_last + bf16'] = ap(evaluate(cfg, bf16_step))
    runtimes = {'ONNX Runtime fp32': ('onnxruntime', 'fp32', onnx_file),
                'OpenVINO fp32': ('openvino', 'fp32', onnx_file)}
    if has_bf16:
        runtimes['OpenVINO bf16'] = ('openvino', 'bf16', onnx_file)
    # INT8 calibrated on 64 images of the train split, as the docs do it
    from embedmask_mmdet.deploy.quantize import (calibration_images,
                                                 sample_images)
    cfg.train_dataloader.dataset.data_root = data_root
    calib = sample_images(calibration_images(cfg), 64)
    for quantizer, backend, label in INT8_PATHS:
        int8_file = osp.join(work_dir, f'demo_int8_{quantizer}.onnx')
        int8(onnx_file, int8_file, calib, quantizer, cfg)
        runtimes[label] = (backend, 'fp32', int8_file)
    agreement = {}
    ref_runs = {}
    for label, (backend, precision, model_file) in runtimes.items():
        runtime = EmbedMaskONNXModel(model_file, backend, config=cfg,
                                     precision=precision)
        out[label] = ap(evaluate(cfg, runtime.predict_batch))
        ref_runs[label] = runtime
    for k, v in out.items():
        log(f'accuracy: {k}: {v}')
    # bf16 mask agreement with fp32, image by image
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg.test_dataloader)
    pairs = {'PyTorch channels_last + bf16': (model.test_step, bf16_step)}
    for _, backend, label in INT8_PATHS:
        fp32_label = 'OpenVINO fp32' if backend == 'openvino' else \
            'ONNX Runtime fp32'
        pairs[label] = (ref_runs[fp32_label].predict_batch,
                        ref_runs[label].predict_batch)
    if has_bf16:
        pairs['OpenVINO bf16'] = (ref_runs['OpenVINO fp32'].predict_batch,
                                  ref_runs['OpenVINO bf16'].predict_batch)
    for label, (ref_fn, got_fn) in pairs.items():
        ious, missed = [], 0
        for data in loader:
            ref = ref_fn(copy.deepcopy(data))
            got = got_fn(copy.deepcopy(data))
            for r, g in zip(ref, got):
                i, m = mask_agreement(r, g)
                ious += i
                missed += m
        agreement[label] = dict(
            matched=len(ious), unmatched=missed,
            min_iou=float(min(ious)) if ious else None,
            mean_iou=float(np.mean(ious)) if ious else None,
            share_at_least_098=float(np.mean(np.array(ious) >= 0.98))
            if ious else None)
        log(f'agreement: {label}: {agreement[label]}')
    return dict(checkpoint=repo_path(checkpoint), ap=out,
                agreement=agreement)


def run(data_root: str, checkpoint=None, cases=None, work_dir=None) -> dict:
    """The deployment section's results (JSON-able)."""
    from embedmask_mmdet.deploy.runtime import openvino_has_bf16
    torch.manual_seed(0)
    peak = peak_gflops()
    has_bf16 = openvino_has_bf16()
    work_dir = work_dir or tempfile.mkdtemp(prefix='deploy_bench_')
    os.makedirs(work_dir, exist_ok=True)
    latency = {}
    for name in (cases or CASES):
        # the Lite row runs the demo weights when they exist (real masks)
        ckpt = checkpoint if name == 'EmbedMask-Lite' else None
        latency[name] = latency_case(name, CASES[name], work_dir, has_bf16,
                                     ckpt)
    overhead = lite_overhead(CASES['EmbedMask-Lite'], work_dir, checkpoint) \
        if 'EmbedMask-Lite' in latency else None
    accuracy = accuracy_case(checkpoint, data_root, work_dir, has_bf16) \
        if checkpoint else None
    large = large_image_case(checkpoint, data_root, work_dir) \
        if checkpoint else None
    import onnxruntime
    import openvino
    return dict(peak=peak, openvino_bf16=has_bf16, latency=latency,
                lite_overhead=overhead, accuracy=accuracy, large_image=large,
                versions=dict(
                    onnxruntime=onnxruntime.__version__,
                    openvino=openvino.__version__, torch=torch.__version__))


def demo_checkpoint(checkpoint=None):
    """``checkpoint``, else `make demo`'s last checkpoint, else None."""
    pointer = osp.join(ROOT, 'work_dirs/demo/last_checkpoint')
    if checkpoint is None and osp.isfile(pointer):
        with open(pointer) as f:
            checkpoint = f.read().strip()
    if checkpoint is not None and not osp.isfile(checkpoint):
        log(f'checkpoint {checkpoint} not found')
        checkpoint = None
    return checkpoint


def measure_deployment(args) -> dict:
    """The deployment section, measured now, with its own command line and
    machine table (``make bench BENCH_ARGS=--only-deploy`` reruns it
    alone)."""
    machine = machine_info(['cpu'])
    start = time.perf_counter()
    section = run(args.data_root, demo_checkpoint(args.deploy_checkpoint),
                  work_dir=osp.join(args.work_dir, 'deploy'))
    machine['load average at end'] = load_average()
    machine['section wall time'] = \
        f'{(time.perf_counter() - start) / 60:.1f} min'
    return dict(command=command_line(), machine=machine, **section)
