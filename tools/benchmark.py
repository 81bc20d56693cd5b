"""Benchmark EmbedMask against FCOS (box only), CondInst, Mask R-CNN, SOLOv2,
YOLACT and RTMDet-Ins, all on one machine in one run, and write
docs/benchmarks.md with PNG plots (``make bench``).

    python tools/benchmark.py [--device auto|cpu|cuda|cpu,cuda]
        [--sizes 800x1333,320x320] [--reps 10] [--train-iters N]
        [--skip-train] [--models embedmask,condinst,...]
        [--out docs/benchmarks.md] [--tiny]

Measured: interleaved inference latency (median, p90) with the number of
detections held equal, and per image at batch 1, 2, 4; peak memory of each
model in a process of its own; training step time and memory at batch 2; EmbedMask's mask post-processing
for 1-200 detections with a linear fit; COCO bbox/segm AP of models trained
with the same backbone, data, optimizer, schedule and iterations; the demo
model's AP with and without test-time augmentation. Sizes are
HEIGHTxWIDTH. The pieces are in tools/analysis_tools/benchmark/ (a study of
this repository, not part of the installed library).
"""
import argparse
import datetime
import gc
import json
import os
import os.path as osp
import platform
import shlex
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
for path in (ROOT, osp.join(ROOT, 'tools')):  # checkout without an install;
    if path not in sys.path:  # tools/ holds the analysis_tools package
        sys.path.insert(0, path)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from analysis_tools.benchmark import (accuracy, measure, models,  # noqa: E402
                                      step_profile)
from analysis_tools.benchmark.report import (HEADLINE_SIZE,  # noqa: E402
                                             load_results, parse_size,
                                             write_report)
from analysis_tools.benchmark.worker import measure_memory  # noqa: E402

DEFAULT_TRAIN_ITERS = 600
TINY = dict(sizes='96x96', reps=2, warmup=1, train_iters=2, train_step_reps=1,
            train_mem_reps=1, size=96)


def _csv(text):
    return [t.strip() for t in text.split(',') if t.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='auto',
                   help="'auto' (default: cpu, plus cuda when available), "
                   "'cpu', 'cuda' or 'cpu,cuda'")
    p.add_argument('--sizes', default=None,
                   help=f'HxW inference sizes (default {HEADLINE_SIZE},'
                   '320x320; tiny: 96x96)')
    p.add_argument('--reps', type=int, default=None,
                   help='timed repetitions per model (default 10; tiny: 2)')
    p.add_argument('--warmup', type=int, default=None,
                   help='warm-up rounds (default 2; tiny: 1)')
    p.add_argument('--train-iters', type=int, default=None,
                   help='equal training budget for the accuracy rows '
                   f'(default {DEFAULT_TRAIN_ITERS}; tiny: 2)')
    p.add_argument('--skip-train', action='store_true',
                   help='skip the accuracy (training) part')
    p.add_argument('--models', type=_csv, default=list(models.MODELS_ALL),
                   help='comma-separated subset of (default: all) ' +
                   ','.join(models.MODELS_ALL))
    p.add_argument('--acc-models', type=_csv, default=None,
                   help='models of the accuracy rows (default: --models '
                   'except the box-only FCOS); also embedmask_semantic: '
                   'EmbedMask with the AdelaiDet design\'s auxiliary semantic '
                   'loss, and embedmask_boxonly: EmbedMask with its mask loss '
                   'weight 0, a diagnostic row')
    p.add_argument('--out', default='docs/benchmarks.md',
                   help='Markdown output (default docs/benchmarks.md); plots '
                   'and the .json go beside it')
    p.add_argument('--tiny', action='store_true',
                   help='tiny inputs and budgets (CI / tests)')
    p.add_argument('--arch', default=None, choices=models.ARCHS,
                   help='shared backbone + neck of the speed rows (default '
                   'r50; tiny: lite0); the accuracy rows always use lite0')
    p.add_argument('--num-dets', type=int, default=100,
                   help='detections every model keeps in the speed rows '
                   '(default 100)')
    p.add_argument('--train-step-size', default=None,
                   help='HxW of the training-step rows (default: the '
                   'largest of --sizes)')
    p.add_argument('--train-step-reps', type=int, default=None,
                   help='timed training steps per model (default 3)')
    p.add_argument('--train-mem-reps', type=int, default=None,
                   help='fresh processes measuring each model\'s training '
                   'peak memory; the median is reported (default 3; tiny: 1)')
    p.add_argument('--postproc-dets', type=lambda t: [int(v) for v in _csv(t)],
                   default=[1, 10, 50, 100, 200],
                   help='detection counts of the post-processing sweep '
                   '(default 1,10,50,100,200)')
    p.add_argument('--work-dir', default='work_dirs/bench',
                   help='work dirs of the accuracy runs (default '
                   'work_dirs/bench)')
    p.add_argument('--report-from', metavar='JSON',
                   help='only rewrite --out (and its plots) from the .json '
                   'an earlier run saved; measures nothing')
    p.add_argument('--data-root', default='data/synthetic',
                   help='built-in dataset (default data/synthetic, made by '
                   '`make data`); --tiny generates a tiny one under --work-dir')
    p.add_argument('--only-deploy', action='store_true',
                   help='measure only the deployment section (PyTorch fp32 / '
                   'channels_last / bf16, ONNX Runtime, OpenVINO) and merge '
                   'it into the existing --out page and .json')
    p.add_argument('--skip-deploy', action='store_true',
                   help='leave the deployment section out (--tiny does)')
    p.add_argument('--deploy-checkpoint', default=None,
                   help='EmbedMask-Lite weights for the deployment accuracy '
                   'rows (default: work_dirs/demo/last_checkpoint, i.e. '
                   '`make demo`\'s; none: no accuracy rows)')
    p.add_argument('--batches', type=lambda t: [int(v) for v in _csv(t)],
                   default=[1, 2, 4],
                   help='batch sizes of the per-image latency rows '
                   '(default 1,2,4)')
    p.add_argument('--batch-reps', type=int, default=None,
                   help='timed repetitions of the batch rows (default: '
                   '--reps up to 640x640, max(2, --reps // 3) above; tiny: 1)')
    p.add_argument('--skip-tta', action='store_true',
                   help='leave the test-time augmentation rows out')
    p.add_argument('--only-tta', action='store_true',
                   help='measure only the test-time augmentation rows and '
                   'merge them into the existing --out page and .json')
    p.add_argument('--seed', type=int, default=None,
                   help='seed torch before the speed rows\' models are built '
                   '(their weights are random); default: not seeded')
    args = p.parse_args(argv)
    if args.acc_models is None:
        args.acc_models = [m for m in args.models if m not in models.BOX_ONLY]
    unknown = set(args.models) - set(models.MODELS_ALL)
    unknown |= set(args.acc_models) - set(models.MODELS_ALL) - set(
        accuracy.VARIANTS)
    if unknown:
        p.error(f'unknown --models/--acc-models {sorted(unknown)}; choose from '
                f'{",".join(models.MODELS_ALL)} (--acc-models also '
                f'{",".join(accuracy.VARIANTS)})')
    t = TINY if args.tiny else dict(sizes=f'{HEADLINE_SIZE},320x320', reps=10,
                                    warmup=2, train_iters=DEFAULT_TRAIN_ITERS,
                                    train_step_reps=3, train_mem_reps=3)
    t['arch'] = 'lite0' if args.tiny else 'r50'
    if args.tiny and args.batch_reps is None:
        args.batch_reps = 1
    for key in ('sizes', 'reps', 'warmup', 'train_iters', 'train_step_reps',
                'train_mem_reps', 'arch'):
        if getattr(args, key) is None:
            setattr(args, key, t[key])
    try:
        args.sizes = [parse_size(s) for s in _csv(args.sizes)]
        args.train_step_size = parse_size(args.train_step_size) \
            if args.train_step_size else max(args.sizes,
                                              key=lambda s: s[0] * s[1])
    except ValueError:
        p.error('sizes are HEIGHTxWIDTH, e.g. 800x1333')
    if min(args.reps, args.train_iters, args.train_step_reps,
           args.train_mem_reps) < 1 or args.warmup < 0:
        p.error('--reps, --train-iters, --train-step-reps and '
                '--train-mem-reps must be >= 1, --warmup >= 0')
    if args.device == 'auto':
        args.devices = ['cpu'] + (['cuda'] if torch.cuda.is_available()
                                  else [])
    else:
        args.devices = _csv(args.device)
        if 'cuda' in args.devices and not torch.cuda.is_available():
            p.error('--device cuda: no CUDA device available')
    return args


def log(msg):
    print(f'[bench {time.strftime("%H:%M:%S")}] {msg}', flush=True)


def sz(size):
    return f'{size[0]}x{size[1]}'


# ------------------------------------------------------------------ metadata
def machine_info(devices):
    cpu = 'unknown'
    with open('/proc/cpuinfo') as f:
        for line in f:
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    with open('/proc/meminfo') as f:
        mem_gb = int(f.readline().split()[1]) / 2**20
    import mmcv
    import mmdet
    import mmengine
    info = {
        'date (UTC)': datetime.datetime.now(datetime.timezone.utc).strftime(
            '%Y-%m-%d %H:%M'),
        'CPU': cpu,
        'logical cores (usable)': f'{os.cpu_count()} '
                                  f'({len(os.sched_getaffinity(0))})',
        'torch threads': torch.get_num_threads(),
        'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', 'unset'),
        'RAM': f'{mem_gb:.1f} GiB',
        'load average at start': ' '.join(f'{v:.2f}' for v in os.getloadavg()),
        'python': platform.python_version(),
        'torch / mmcv / mmengine / mmdet': f'{torch.__version__} / '
        f'{mmcv.__version__} / {mmengine.__version__} / {mmdet.__version__}',
    }
    if 'cuda' in devices:
        info['GPU'] = torch.cuda.get_device_name(0)
        info['CUDA'] = torch.version.cuda
    return info


def models_desc(args):
    em = models.EMBEDMASK_CONFIGS
    lines = [f'- EmbedMask: `{osp.relpath(em[args.arch], ROOT)}` (speed), '
             f'`{osp.relpath(em["lite0"], ROOT)}` (accuracy).']
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


# --------------------------------------------------------------------- speed
def speed_bench(args, device, save):
    arch = args.arch
    num_classes = models.model_cfg('embedmask', arch).bbox_head.num_classes
    name = torch.cuda.get_device_name(0) if device == 'cuda' \
        else machine_info([device])['CPU']
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
        log(f'{device} latency at {sz(size)}: detections {dets}')
        times = measure.interleave(fns, args.warmup, args.reps, device)
        out['latency'][sz(size)] = {
            m: dict(measure.summarize(times[m]), dets=dets[m])
            for m in args.models}
        log('  median ms ' + ', '.join(
            f'{m} {r["median_ms"]:.1f}'
            for m, r in out['latency'][sz(size)].items()))
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
            f'{sz(size)}, {reps} reps')
        rows = measure.batch_latency(built, size, args.batches, warmup, reps,
                                     device)
        out['batch']['sizes'][sz(size)] = dict(reps=reps, warmup=warmup,
                                               models=rows)
        log('  per-image median ms ' + '; '.join(
            f'{m} ' + '/'.join(f'{r[b]["median_ms"]:.0f}'
                               for b in args.batches)
            for m, r in rows.items()))
        save()
    if 'embedmask' in built:
        size = parse_size(HEADLINE_SIZE) if parse_size(HEADLINE_SIZE) in \
            args.sizes else max(args.sizes, key=lambda s: s[0] * s[1])
        log(f'{device} EmbedMask post-processing at {sz(size)}, '
            f'N={args.postproc_dets}')
        pp = measure.postproc_sweep(built['embedmask'], size,
                                    args.postproc_dets, args.warmup,
                                    args.reps, device)
        pp.update(size=sz(size), reps=args.reps)
        out['postproc'] = pp
        log(f'  fit {pp["fit"]}')
        save()
        if 'fcos' in built:
            log(f'{device} EmbedMask vs FCOS stage by stage at {sz(size)}')
            out['breakdown'] = dict(
                size=sz(size), reps=args.reps,
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
    log(f'{device} training steps at {sz(args.train_step_size)}')
    times = measure.interleave(steppers, 1, args.train_step_reps, device)
    out['train_step'] = dict(
        size=sz(args.train_step_size), batch=2, warmup=1,
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
            mem['infer'].setdefault(sz(size), {})[m] = measure_memory(
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


# ------------------------------------------------------------------ accuracy
def accuracy_bench(args, save, results):
    names = [m for m in args.acc_models if m not in models.BOX_ONLY]
    data_root = args.data_root
    tiny_size = None
    if args.tiny:
        from embedmask_mmdet.datasets import generate_synthetic_coco
        data_root = osp.join(args.work_dir, 'tiny_data')
        tiny_size = (TINY['size'], TINY['size'])
        generate_synthetic_coco(data_root, num_train=4, num_val=2, seed=0,
                                size=tiny_size)
    if not osp.isfile(osp.join(data_root, 'annotations/instances_val.json')):
        sys.exit(f'error: no dataset at {data_root}; run `make data` (or '
                 'tools/make_synthetic_coco.py) first')
    cfg = accuracy.runner_cfg('embedmask', args.train_iters, args.work_dir,
                              data_root, tiny_size=tiny_size)
    counts = {}
    for split in ('train', 'val'):
        with open(osp.join(data_root, f'annotations/instances_{split}.json')) \
                as f:
            coco = json.load(f)
        counts[split] = (len(coco['images']), len(coco['annotations']),
                         len(coco['categories']))
    opt = cfg.optim_wrapper.optimizer
    sched = cfg.param_scheduler
    scale = [s['scale'] for s in cfg.train_dataloader.dataset.pipeline
             if s['type'] == 'Resize'][0]
    acc = dict(
        iters=args.train_iters, models={},
        data=f'`{data_root}`: {counts["train"][0]} train images '
        f'({counts["train"][1]} instances), {counts["val"][0]} val images '
        f'({counts["val"][1]} instances), {counts["val"][2]} classes',
        setup=f'batch {cfg.train_dataloader.batch_size}, images resized to '
        f'{scale[0]}x{scale[1]} (keep ratio) + random flip, '
        f'{opt.type} lr {opt.lr:g} weight decay {opt.get("weight_decay", 0):g}'
        f', grad clip {cfg.optim_wrapper.get("clip_grad", {}).get("max_norm")}'
        f', linear warm-up over {sched[0]["end"]} iterations then x0.1 at '
        f'iterations {sched[1]["milestones"]}, the same EfficientNet-Lite0 ('
        + ('random init' if args.tiny else
           'ImageNet weights from its pip package') +
        ') + FPN-96 (P3-P7) for every model (EmbedMask\'s FPN also makes P2 '
        'for its pixel branch and it trains in channels-last layout, as its '
        'config says), heads narrowed alike, seed 0')
    results['accuracy'] = acc
    for m in names:
        log(f'accuracy: training {m} for {args.train_iters} iterations')
        try:
            acc['models'][m] = accuracy.train_and_test(
                m, args.train_iters, args.work_dir, data_root,
                pretrained=not args.tiny, tiny_size=tiny_size)
        except RuntimeError as e:  # keep the other rows; say what failed
            log(f'accuracy: {m} failed: {e}')
            acc['models'][m] = None
        log(f'  {m}: {acc["models"][m]}')
        save()
    return acc


def deploy_section(args) -> dict:
    """The deployment section, measured now (tools/analysis_tools)."""
    from analysis_tools.benchmark import deploy as deploy_bench
    ckpt = demo_checkpoint(args)
    command = 'python ' + ' '.join(shlex.quote(a) for a in [
        osp.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    machine = machine_info(['cpu'])
    start = time.perf_counter()
    section = deploy_bench.run(args.data_root, ckpt,
                               work_dir=osp.join(args.work_dir, 'deploy'))
    machine['load average at end'] = ' '.join(
        f'{v:.2f}' for v in os.getloadavg())
    machine['section wall time'] = \
        f'{(time.perf_counter() - start) / 60:.1f} min'
    return dict(command=command, machine=machine, **section)


def demo_checkpoint(args):
    """--deploy-checkpoint, else `make demo`'s last checkpoint, else None."""
    ckpt = args.deploy_checkpoint
    pointer = osp.join(ROOT, 'work_dirs/demo/last_checkpoint')
    if ckpt is None and osp.isfile(pointer):
        with open(pointer) as f:
            ckpt = f.read().strip()
    if ckpt is not None and not osp.isfile(ckpt):
        log(f'checkpoint {ckpt} not found')
        ckpt = None
    return ckpt


def tta_section(args, results):
    """EmbedMask-Lite with and without test-time augmentation on the
    built-in val split (the demo checkpoint; --tiny: the tiny accuracy
    run's EmbedMask on its tiny data)."""
    from analysis_tools.benchmark import tta
    if args.tiny:
        acc = (results.get('accuracy') or {}).get('models', {})
        if not acc.get('embedmask'):
            log('tta: no tiny EmbedMask run to test')
            return None
        work = osp.join(ROOT, acc['embedmask']['work_dir'])
        with open(osp.join(work, 'last_checkpoint')) as f:
            ckpt = f.read().strip()
        config = osp.join(work, 'bench_embedmask.py')
        data_root = osp.join(args.work_dir, 'tiny_data')
    else:
        ckpt, config, data_root = demo_checkpoint(args), None, args.data_root
        if ckpt is None:
            log('tta: no demo checkpoint (run `make demo` or pass '
                '--deploy-checkpoint): no TTA rows')
            return None
    log(f'tta: testing {ckpt} without and with test-time augmentation')
    start = time.perf_counter()
    # the tiny run's barely trained model scores under the threshold
    section = tta.run(data_root, ckpt, osp.join(args.work_dir, 'tta'),
                      **(dict(config=config, test_cfg=dict(score_thr=0.))
                         if config else {}))
    section['machine'] = dict(machine_info(['cpu']), **{
        'section wall time':
        f'{(time.perf_counter() - start) / 60:.1f} min'})
    rows = section['rows']
    log('  segm mAP ' + ', '.join(f'{k} {v["segm_mAP"]:.3f}'
                                  for k, v in rows.items()))
    return section


def main(argv=None):
    args = parse_args(argv)
    if args.only_tta:
        json_path = osp.splitext(args.out)[0] + '.json'
        results = load_results(json_path) if osp.isfile(json_path) else \
            dict(meta=dict(command='(not run)', machine={}, models_desc=''),
                 speed={}, accuracy=None)
        measure.register()
        results['tta'] = tta_section(args, results)
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1, default=str)
        files = write_report(results, args.out)
        log(f'wrote the TTA rows into {", ".join(files)}')
        return
    if args.only_deploy:
        json_path = osp.splitext(args.out)[0] + '.json'
        results = load_results(json_path) if osp.isfile(json_path) else \
            dict(meta=dict(command='(not run)', machine={}, models_desc=''),
                 speed={}, accuracy=None)
        results['deployment'] = deploy_section(args)
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1, default=str)
        files = write_report(results, args.out)
        log(f'wrote the deployment section into {", ".join(files)}')
        return
    if args.report_from:
        files = write_report(load_results(args.report_from), args.out)
        log(f'wrote {", ".join(files)} from {args.report_from}')
        return
    measure.register()
    if args.seed is not None:
        torch.manual_seed(args.seed)
    start = time.perf_counter()
    json_path = osp.splitext(args.out)[0] + '.json'
    os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
    results = dict(meta=dict(
        command='python ' + ' '.join(shlex.quote(a) for a in
                                     [osp.relpath(sys.argv[0], ROOT)] +
                                     sys.argv[1:]),
        machine=machine_info(args.devices), models_desc=models_desc(args)),
        speed={}, accuracy=None)

    def save():
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1, default=str)

    for device in args.devices:
        results['speed'][device] = speed_bench(args, device, save)
    if not (args.skip_tta or args.tiny):
        results['tta'] = tta_section(args, results)
        save()
    if not args.skip_train:
        accuracy_bench(args, save, results)
        if args.tiny and not args.skip_tta:
            results['tta'] = tta_section(args, results)
            save()
    if not (args.skip_deploy or args.tiny):
        results['deployment'] = deploy_section(args)
        save()
    results['meta']['machine']['load average at end'] = ' '.join(
        f'{v:.2f}' for v in os.getloadavg())
    results['meta']['machine']['benchmark wall time'] = \
        f'{(time.perf_counter() - start) / 60:.1f} min'
    save()
    files = write_report(results, args.out)
    log(f'wrote {json_path} and, in {osp.dirname(args.out) or "."}: '
        f'{", ".join(files)}')


if __name__ == '__main__':
    main()
