"""The speed sections of ``make bench``: every compared model's inference
latency (interleaved, detections held equal) and per-image latency at each
batch size, EmbedMask's mask post-processing against the number of
detections and its predict path next to FCOS's, the training step (time,
FLOPs, where the operator time goes, what autograd keeps) and peak memory
in a process per model. ``speed_report`` renders the results."""
import gc
import os.path as osp

import numpy as np
import torch

from . import measure, models, step_profile
from .machine import ROOT, cpu_info, log, parse_size, size_text
from .report import HEADLINE_SIZE
from .worker import measure_memory


def describe_models(args) -> str:
    """The page's "Models" section: the configs and what is shared."""
    configs = models.EMBEDMASK_CONFIGS
    lines = [f'- EmbedMask: `{osp.relpath(configs[args.arch], ROOT)}` (speed), '
             f'`{osp.relpath(configs["lite0"], ROOT)}` (accuracy).']
    for m in args.models:
        if m in models.PACKAGED:
            lines.append(f'- {models.LABELS[m]}: mmdet `configs/'
                         f'{models.PACKAGED[m]}` (packaged in mmdet '
                         f'{__import__("mmdet").__version__}).')
    p = models.shared_parts(args.arch)
    b, n = p['backbone'], p['neck']
    num_classes = models.model_cfg('embedmask',
                                   args.arch).bbox_head.num_classes
    lines += [
        f'- Every model gets the same data preprocessor, backbone '
        f'(`{b.type}`{" depth " + str(b.depth) if "depth" in b else ""}, '
        f'`init_cfg=None`: random weights in the speed rows) and neck '
        f'(`{n.type}`, {n.out_channels} channels, {n.num_outs} levels, '
        f'strides {p["strides"]}); heads keep their own configs '
        f'(num_classes {num_classes}).',
        '- Mask R-CNN and SOLOv2 were designed on P2-P6; here they read the '
        'shared P3-P7: Mask R-CNN anchors at the pyramid strides with scale '
        '4 (the same anchor sizes as its COCO config), RoIAlign on P3-P6; '
        'SOLOv2 mask features from P3-P5 at stride 8 (instead of P2-P5 at 4). '
        'YOLACT anchors at the pyramid strides (its config is for 550 px).',
        f'- Detections held equal: score thresholds 0 and {args.num_dets} kept '
        '(FCOS family `score_thr=0, max_per_img`; Mask R-CNN `rcnn.score_thr=0, '
        'max_per_img`; YOLACT `score_thr=0, max_per_img`; SOLOv2 '
        '`filter_thr=0, max_per_img` with `score_thr` set per input so that '
        f'exactly nms_pre={models.SOLOV2_CANDIDATES} candidates are decoded, '
        'as 0 would decode every grid cell x class).',
    ]
    return '\n'.join(lines)


def measure_speed(args, device: str, save) -> dict:
    """Every speed row on ``device``; ``save()`` after each part (the run
    is long: a crash keeps what was measured)."""
    arch = args.arch
    num_classes = models.model_cfg('embedmask', arch).bbox_head.num_classes
    name = torch.cuda.get_device_name(0) if device == 'cuda' \
        else cpu_info()['model']
    out = dict(meta=dict(
        device_name=name, num_dets=args.num_dets, reps=args.reps,
        warmup=args.warmup, arch=arch,
        arch_desc='ResNet-50 + FPN-256 (P3-P7), COCO head widths, '
        '80 classes' if arch == 'r50' else
        'EfficientNet-Lite0 + FPN-96 (P3-P7), narrow heads'))
    built = {}
    for m in args.models:
        built[m] = measure.build(m, arch, device, args.num_dets)
    out['latency'] = {}
    for size in args.sizes:
        fns, dets = {}, {}
        for m in args.models:
            fns[m], dets[m] = measure.predictor(m, built[m], size, device)
        log(f'{device} latency at {size_text(size)}: detections {dets}')
        times = measure.interleave(fns, args.warmup, args.reps, device)
        out['latency'][size_text(size)] = {
            m: dict(measure.summarize(times[m]), dets=dets[m])
            for m in args.models}
        log('  median ms ' + ', '.join(
            f'{m} {r["median_ms"]:.1f}'
            for m, r in out['latency'][size_text(size)].items()))
        save()
    out['batch'] = dict(batches=list(args.batches), sizes={})
    for size in args.sizes:
        # large inputs: building each predictor runs it once, which is the
        # warm-up, and a third of the repetitions (each round runs every
        # model at every batch size: minutes at 800x1333)
        small = size[0] * size[1] <= 640 * 640
        reps = args.batch_reps or (args.reps if small else
                                   max(2, args.reps // 3))
        warmup = 1 if small else 0
        log(f'{device} per-image latency at batch {args.batches}, '
            f'{size_text(size)}, {reps} reps')
        rows = measure.batch_latency(built, size, args.batches, warmup, reps,
                                     device)
        out['batch']['sizes'][size_text(size)] = dict(reps=reps, warmup=warmup,
                                               models=rows)
        log('  per-image median ms ' + '; '.join(
            f'{m} ' + '/'.join(f'{r[b]["median_ms"]:.0f}'
                               for b in args.batches)
            for m, r in rows.items()))
        save()
    if 'embedmask' in built:
        size = parse_size(HEADLINE_SIZE) if parse_size(HEADLINE_SIZE) in \
            args.sizes else max(args.sizes, key=lambda s: s[0] * s[1])
        log(f'{device} EmbedMask post-processing at {size_text(size)}, '
            f'N={args.postproc_dets}')
        pp = measure.postproc_sweep(built['embedmask'], size,
                                    args.postproc_dets, args.warmup,
                                    args.reps, device)
        pp.update(size=size_text(size), reps=args.reps)
        out['postproc'] = pp
        log(f'  fit {pp["fit"]}')
        save()
        if 'fcos' in built:
            log(f'{device} EmbedMask vs FCOS stage by stage at {size_text(size)}')
            out['breakdown'] = dict(
                size=size_text(size), reps=args.reps,
                models=measure.breakdown(
                    {m: built[m] for m in ('embedmask', 'fcos')}, size,
                    args.warmup, args.reps, device))
            save()
    del built, fns
    gc.collect()

    steppers, trained = {}, {}
    for m in args.models:
        trained[m] = measure.build(m, arch, device, train=True)
        steppers[m] = measure.train_stepper(trained[m], args.train_step_size,
                                            device, num_classes=num_classes)
    log(f'{device} training steps at {size_text(args.train_step_size)}')
    times = measure.interleave(steppers, 1, args.train_step_reps, device)
    out['train_step'] = dict(
        size=size_text(args.train_step_size), batch=2, warmup=1,
        reps=args.train_step_reps,
        models={m: measure.summarize(times[m]) for m in args.models})
    for m, model in trained.items():
        out['train_step']['models'][m]['saved_mb'] = \
            measure.saved_for_backward_mb(model, args.train_step_size,
                                          num_classes=num_classes)
    for m in args.models:
        # after the timed steps: counting and profiling slow a step down
        row = out['train_step']['models'][m]
        row['flops'] = step_profile.step_flops(steppers[m])
        if device == 'cpu':
            row['op_time'] = step_profile.step_time_split(steppers[m])
        log(f'  {m}: {row["flops"]["gflops"]:.1f} GFLOPs per step')
    if 'embedmask' in trained:
        # what EmbedMask's fused focal loss saves, for a like-for-like
        # reading of the memory columns (CondInst uses mmdet's FocalLoss)
        model = measure.build('embedmask', arch, device, train=True,
                              mmdet_focal=True)
        out['train_step']['embedmask_mmdet_focal_saved_mb'] = \
            measure.saved_for_backward_mb(model, args.train_step_size,
                                          num_classes=num_classes)
    del steppers, trained, model
    gc.collect()
    save()

    mem = dict(infer={}, train={})
    spec = dict(arch=arch, device=device, num_dets=args.num_dets,
                num_classes=num_classes, steps=2)
    for m in args.models:
        for size in args.sizes:
            # peak of 2 predictions: the detection count's, then one more
            mem['infer'].setdefault(size_text(size), {})[m] = measure_memory(
                dict(spec, model=m, mode='infer', size=list(size), steps=1))
        # the median of several fresh processes: one process's peak RSS
        # varies by ~2 % with the allocator's layout
        runs = [measure_memory(dict(spec, model=m, mode='train',
                                    size=list(args.train_step_size)))
                for _ in range(args.train_mem_reps)]
        mem['train'][m] = dict(
            peak_rss_mb=float(np.median([r['peak_rss_mb'] for r in runs])),
            rss_built_mb=float(np.median([r['rss_built_mb'] for r in runs])),
            peak_rss_mb_runs=[r['peak_rss_mb'] for r in runs])
        if 'cuda_peak_mb' in runs[0]:
            mem['train'][m]['cuda_peak_mb'] = float(
                np.median([r['cuda_peak_mb'] for r in runs]))
        log(f'{device} memory {m}: infer ' + ', '.join(
            f'{s} {v[m]["peak_rss_mb"]:.0f} MiB'
            for s, v in mem['infer'].items()) +
            f'; train {mem["train"][m]["peak_rss_mb"]:.0f} MiB')
    out['memory'] = mem
    save()
    return out
