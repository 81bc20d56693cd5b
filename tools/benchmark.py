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
import json
import os
import os.path as osp
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
for path in (ROOT, osp.join(ROOT, 'tools')):  # checkout without an install;
    if path not in sys.path:  # tools/ holds the analysis_tools package
        sys.path.insert(0, path)

import torch  # noqa: E402

from analysis_tools.benchmark import accuracy, measure, models  # noqa: E402
from analysis_tools.benchmark.accuracy import measure_accuracy  # noqa: E402
from analysis_tools.benchmark.beyond import \
    measure_large_images_and_video  # noqa: E402
from analysis_tools.benchmark.deploy import measure_deployment  # noqa: E402
from analysis_tools.benchmark.machine import (command_line,  # noqa: E402
                                              load_average, log,
                                              machine_info, parse_size)
from analysis_tools.benchmark.report import (HEADLINE_SIZE,  # noqa: E402
                                             load_results, write_report)
from analysis_tools.benchmark.speed import (describe_models,  # noqa: E402
                                            measure_speed)
from analysis_tools.benchmark.tta import measure_tta  # noqa: E402

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
    p.add_argument('--only-large-images-video', action='store_true',
                   help='measure only the large-images and video section '
                   '(plain / SAHI / sliced inference on generated large '
                   'images; instance IDs on synthetic videos) and merge it '
                   'into the existing --out page and .json')
    p.add_argument('--skip-large-images-video', action='store_true',
                   help='leave the large-images and video section out '
                   '(--tiny does)')
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
    args.tiny_size = TINY['size']
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


def merge_section(args, key: str, measure_fn, what: str) -> None:
    """--only-*: measures one section and merges it into the existing
    --out page and .json (a fresh page when there is none)."""
    json_path = osp.splitext(args.out)[0] + '.json'
    results = load_results(json_path) if osp.isfile(json_path) else \
        dict(meta=dict(command='(not run)', machine={}, models_desc=''),
             speed={}, accuracy=None)
    measure.register()
    results[key] = measure_fn(args, results)
    with open(json_path, 'w') as f:
        json.dump(results, f, indent=1, default=str)
    files = write_report(results, args.out)
    log(f'wrote {what} into {", ".join(files)}')


def main(argv=None):
    args = parse_args(argv)
    for only, key, measure_fn, what in (
            (args.only_tta, 'tta', measure_tta, 'the TTA rows'),
            (args.only_deploy, 'deployment',
             lambda a, _: measure_deployment(a), 'the deployment section'),
            (args.only_large_images_video, 'large_images_video',
             lambda a, _: measure_large_images_and_video(a),
             'the large-images and video section')):
        if only:
            merge_section(args, key, measure_fn, what)
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
        command=command_line(), machine=machine_info(args.devices),
        models_desc=describe_models(args)),
        speed={}, accuracy=None)

    def save():
        with open(json_path, 'w') as f:
            json.dump(results, f, indent=1, default=str)

    for device in args.devices:
        results['speed'][device] = measure_speed(args, device, save)
    if not (args.skip_tta or args.tiny):
        results['tta'] = measure_tta(args, results)
        save()
    if not args.skip_train:
        measure_accuracy(args, save, results)
        if args.tiny and not args.skip_tta:
            results['tta'] = measure_tta(args, results)
            save()
    if not (args.skip_deploy or args.tiny):
        results['deployment'] = measure_deployment(args)
        save()
    if not (args.skip_large_images_video or args.tiny):
        results['large_images_video'] = measure_large_images_and_video(args)
        save()
    results['meta']['machine']['load average at end'] = load_average()
    results['meta']['machine']['benchmark wall time'] = \
        f'{(time.perf_counter() - start) / 60:.1f} min'
    save()
    files = write_report(results, args.out)
    log(f'wrote {json_path} and, in {osp.dirname(args.out) or "."}: '
        f'{", ".join(files)}')


if __name__ == '__main__':
    main()
