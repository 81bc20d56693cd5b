"""docs/benchmarks.md and its PNG plots, written from one run's results only
(every figure in the document comes from the ``results`` dict)."""
import os
import os.path as osp
from typing import List, Optional

from .batch_tta_report import (BATCH_TARGET, BATCH_TARGET_SIZE, TTA_TARGET,
                               batch_ratio, batch_section, tta_section)
from .deploy_report import deployment_section
from .fmt import num as _f
from .fmt import ratio as _ratio
from .fmt import table as _table
from .plots import (PLOTS, model_label, plot_accuracy,  # noqa: F401
                    plot_latency, plot_name, plot_postproc, plot_train)
from .step_profile import section_lines as step_profile_lines


HEADLINE_SIZE = '800x1333'


def headline_size(speed: dict) -> Optional[str]:
    sizes = list(speed.get('latency', {}))
    if HEADLINE_SIZE in sizes:
        return HEADLINE_SIZE
    if not sizes:
        return None
    return max(sizes, key=lambda s: parse_size(s)[0] * parse_size(s)[1])


def parse_size(text: str):
    h, w = (int(v) for v in text.lower().split('x'))
    return h, w


def targets(results: dict) -> List[dict]:
    """The issue's targets, each with its measured value and verdict."""
    out = []
    speed = results.get('speed', {}).get('cpu')

    def add(what, value, bound, upper=True, unit='ratio'):
        met = None if value is None else (
            value <= bound if upper else value >= bound)
        if value is None:
            margin = 'not measured'
        elif unit == 'points':
            margin = f'{value - bound:+.1f} points'
        else:
            rel = abs(bound - value) / bound * 100
            margin = f'{rel:.1f} % ' + ('below' if value <= bound else
                                        'above') + ' the bound'
        out.append(dict(what=what, value=value, bound=bound, upper=upper,
                        met=met, margin=margin, unit=unit))

    if speed:
        size = headline_size(speed)
        lat = speed.get('latency', {}).get(size, {})
        med = {m: r['median_ms'] for m, r in lat.items()}
        add(f'CPU latency at {size}: EmbedMask / CondInst',
            _ratio(med.get('embedmask'), med.get('condinst')), 0.9)
        add(f'CPU latency at {size}: EmbedMask / FCOS',
            _ratio(med.get('embedmask'), med.get('fcos')), 1.15)
        pp = speed.get('postproc')
        if pp and pp['size'] == size and 100 in pp['total']:
            add(f'100-detection post-processing / EmbedMask end-to-end '
                f'({size})', _ratio(pp['total'][100]['median_ms'],
                                    med.get('embedmask')), 0.10)
        ts = speed.get('train_step', {}).get('models', {})
        tm = speed.get('memory', {}).get('train', {})
        add('training step time: EmbedMask / CondInst',
            _ratio(ts.get('embedmask', {}).get('median_ms'),
                   ts.get('condinst', {}).get('median_ms')), 1.0)
        flops = _ratio(*(ts.get(m, {}).get('flops', {}).get('gflops')
                         for m in ('embedmask', 'condinst')))
        if flops is not None and out[-1]['value'] is not None:
            out[-1]['margin'] += f' (FLOPs per step: {flops:.3f})'
        add('training peak memory (RSS): EmbedMask / CondInst',
            _ratio(tm.get('embedmask', {}).get('peak_rss_mb'),
                   tm.get('condinst', {}).get('peak_rss_mb')), 1.0)
        if speed.get('batch'):
            add(f'EmbedMask per-image latency, batch 4 / batch 1 '
                f'({BATCH_TARGET_SIZE})', batch_ratio(speed), BATCH_TARGET)
    tta = results.get('tta')
    if tta:
        rows = tta['rows']
        add('TTA segm AP gain over plain testing (demo model), points',
            100 * (rows['tta']['segm_mAP'] - rows['plain']['segm_mAP']),
            100 * TTA_TARGET, upper=False, unit='points')
    acc = (results.get('accuracy') or {}).get('models', {})
    # a model that detected nothing gives no evidence either way
    em, ci = ((acc.get(m) or {}).get('segm') if not (acc.get(m) or {}).get(
        'no_detections') else None for m in ('embedmask', 'condinst'))
    if acc:
        for key, what, strict in (('mAP', 'segm AP', False),
                                  ('mAP_75', 'segm AP75', True)):
            diff = None if not (em and ci) else \
                100 * (em[key] - ci[key])
            entry_bound = 0.0
            add(f'equal-budget {what}: EmbedMask - CondInst'
                + (' (> 0)' if strict else ' (>= 0)'), diff, entry_bound,
                upper=False, unit='points')
            if strict and diff is not None:
                out[-1]['met'] = diff > 0
    return out


# -------------------------------------------------------------------- markdown
def _speed_section(speed: dict, device: str, out_dir: str,
                   written: List[str]) -> List[str]:
    meta = speed['meta']
    lines = [f'## {device.upper()}: {meta["device_name"]}', '']
    lines += [f'Shared backbone + neck: **{meta["arch_desc"]}**; every model '
              f'keeps exactly {meta["num_dets"]} detections (column '
              '"dets" = the count each model actually returned). '
              f'{meta["warmup"]} warm-up round(s), then {meta["reps"]} '
              'interleaved repetitions (each repetition runs every model once, '
              'round-robin). Latency = preprocessing + network + '
              'post-processing + masks at the original size, batch 1. '
              'Peak RSS: the peak of 2 predictions in a process of its own '
              '(imported libraries and the model included: "RSS after build" '
              'is that baseline).', '']
    lat = speed.get('latency', {})
    first = None
    for size, rows in lat.items():
        first = first or rows
        em = rows.get('embedmask', {}).get('median_ms')
        mem = speed.get('memory', {}).get('infer', {}).get(size, {})
        lines.append(f'### Inference at {size}')
        lines.append('')
        header = ['model', 'dets', 'median ms', 'p90 ms',
                  'EmbedMask / model', 'peak RSS MiB', 'RSS after build MiB']
        if device == 'cuda':
            header.append('peak CUDA MiB')
        table = []
        for m, r in rows.items():
            row = [model_label(m), r['dets'], _f(r['median_ms']),
                   _f(r['p90_ms']),
                   _f(_ratio(em, r['median_ms']), 3),
                   _f(mem.get(m, {}).get('peak_rss_mb'), 0),
                   _f(mem.get(m, {}).get('rss_built_mb'), 0)]
            if device == 'cuda':
                row.append(_f(mem.get(m, {}).get('cuda_peak_mb'), 0))
            table.append(row)
        lines += _table(header, table)
        counts = sorted({r['dets'] for r in rows.values()})
        lines += [f'All models returned {counts[0]} detections.' if len(counts)
                  == 1 else '**Detection counts differ** (' + ', '.join(
                      f'{model_label(m)} {r["dets"]}'
                      for m, r in rows.items()) +
                  '): compare with care.', '']
    if lat:
        name = plot_name('latency', device)
        plot_latency(speed, osp.join(out_dir, name), device)
        written.append(name)
        lines += [f'![inference latency]({name})', '']
    ts = speed.get('train_step')
    if ts:
        mem = speed.get('memory', {}).get('train', {})
        ci = ts['models'].get('condinst', {}).get('median_ms')
        ci_mem = mem.get('condinst', {}).get('peak_rss_mb')
        mem_runs = len(next(iter(mem.values()), {}).get('peak_rss_mb_runs',
                                                         [None]))
        lines += [f'### Training step, batch {ts["batch"]} at {ts["size"]}',
                  '', 'Random images with a few synthetic gt boxes + masks; '
                  'loss, backward, SGD step. '
                  f'{ts["warmup"]} warm-up step(s), {ts["reps"]} interleaved '
                  'timed steps per model; memory: peak of 2 steps in a process '
                  'of its own (RSS includes the imported libraries and the '
                  'model: "RSS after build" is that baseline)' +
                  (f', the median of {mem_runs} such processes'
                   if mem_runs > 1 else '') + '.', '']
        ci_saved = ts['models'].get('condinst', {}).get('saved_mb')
        header = ['model', 'median s', 'p90 s', 'model / CondInst',
                  'peak RSS MiB', 'RSS after build MiB', 'peak / CondInst',
                  'saved for backward MiB', 'saved / CondInst']
        if device == 'cuda':
            header.append('peak CUDA MiB')
        table = []
        for m, r in ts['models'].items():
            mm = mem.get(m, {})
            row = [model_label(m), _f(r['median_ms'] / 1e3, 2),
                   _f(r['p90_ms'] / 1e3, 2),
                   _f(_ratio(r['median_ms'], ci), 3),
                   _f(mm.get('peak_rss_mb'), 0), _f(mm.get('rss_built_mb'), 0),
                   _f(_ratio(mm.get('peak_rss_mb'), ci_mem), 3),
                   _f(r.get('saved_mb'), 0),
                   _f(_ratio(r.get('saved_mb'), ci_saved), 3)]
            if device == 'cuda':
                row.append(_f(mm.get('cuda_peak_mb'), 0))
            table.append(row)
        lines += _table(header, table)
        lines += ['"Saved for backward": the tensors autograd keeps from one '
                  'training forward (each storage once), the deterministic '
                  'part of the peak that RSS measures with allocator noise.']
        em_mmdet = ts.get('embedmask_mmdet_focal_saved_mb')
        if em_mmdet is not None:
            lines[-1] += (
                ' EmbedMask\'s configs use `FusedFocalLoss` (mmdet\'s sigmoid '
                'focal loss with the same values and gradients, one saved '
                'tensor) for its classification and semantic losses; with '
                f'mmdet\'s `FocalLoss`, as CondInst uses, it would keep '
                f'{em_mmdet:.0f} MiB'
                + (f' ({_ratio(em_mmdet, ci_saved):.3f} x CondInst).'
                   if ci_saved else '.'))
        lines += ['']
        name = plot_name('train', device)
        plot_train(speed, osp.join(out_dir, name), device)
        written.append(name)
        lines += [f'![training step]({name})', '']
        lines += step_profile_lines(ts, model_label)
    pp = speed.get('postproc')
    if pp:
        em = lat.get(pp['size'], {}).get('embedmask', {}).get('median_ms')
        fit = pp['fit']
        lines += [f'### EmbedMask mask post-processing vs detections '
                  f'({pp["size"]})', '',
                  'The mask head\'s predict path for one image from its pixel '
                  f'embeddings ({"x".join(map(str, pp["pixel_embed_shape"]))}) '
                  'and N detections: `mask_probability`, resampling to the '
                  'original size and thresholding (`paste_masks`; on a CPU '
                  'each detection is resampled only inside the rectangle '
                  'around its cells above the threshold, which gives the same '
                  'masks as resampling the whole image). '
                  f'{pp["reps"]} interleaved repetitions. Each N has its own '
                  'random detections (boxes, embeddings, margins around the '
                  'prior) on the random-weight model of the latency rows; a '
                  'detection costs in proportion to the area of the rectangle '
                  'around its mask, so a point sits below the line when its '
                  'masks happen to be small.', '']
        table = []
        for n in sorted(pp['total']):
            tot = pp['total'][n]
            table.append([n, _f(tot['median_ms']), _f(tot['p90_ms']),
                          _f(pp['mask_probability'][n]['median_ms']),
                          _f(pp['paste_masks'][n]['median_ms']),
                          _f(tot['median_ms'] / n, 2),
                          _f(None if not em else 100 * tot['median_ms'] / em)])
        lines += _table(['N', 'total median ms', 'total p90 ms',
                         'mask_probability ms', 'paste_masks ms',
                         'ms / detection', '% of EmbedMask end-to-end'],
                        table)
        lines += [f'Least-squares line: time = {_f(fit["intercept"], 2)} ms + '
                  f'{_f(fit["slope"], 3)} ms x N, R^2 = {_f(fit["r2"], 4)} '
                  f'({"linear" if fit["r2"] >= 0.98 else "not linear"} in N '
                  'at R^2 >= 0.98).', '']
        name = plot_name('postproc', device)
        plot_postproc(pp, em, osp.join(out_dir, name), device)
        written.append(name)
        lines += [f'![post-processing vs detections]({name})', '']
    if speed.get('breakdown'):
        lines += _breakdown_section(speed['breakdown'])
    return lines


def _breakdown_section(bd: dict) -> List[str]:
    """EmbedMask's predict path next to FCOS's, stage by stage."""
    from .measure import BREAKDOWN_PARTS
    em, fc = bd['models']['embedmask'], bd['models']['fcos']
    fc_total = fc['end to end']['median_ms']

    def ms(model, part):
        return model.get(part, {}).get('median_ms')

    table = []
    for part in BREAKDOWN_PARTS + ('end to end', ):
        a, b = ms(em, part), ms(fc, part)
        diff = (a or 0.) - (b or 0.)
        table.append([part, _f(a), _f(b), _f(diff),
                      _f(100 * diff / fc_total, 1)])
    parts_sum = sum(ms(em, p) or 0. for p in BREAKDOWN_PARTS)
    return [f'### Where EmbedMask\'s time goes, next to FCOS ({bd["size"]})',
            '', 'Each stage of the predict path timed on its own (median of '
            f'{bd["reps"]} repetitions, every stage of both models interleaved '
            'in one loop, with the end-to-end runs in the same loop); '
            'the column "EmbedMask - FCOS" is EmbedMask\'s extra time, also as '
            'a share of FCOS\'s end-to-end time. The EmbedMask stages sum to '
            f'{_f(parts_sum)} ms against {_f(ms(em, "end to end"))} ms end to '
            'end.', ''] + _table(
                ['stage', 'EmbedMask ms', 'FCOS ms', 'EmbedMask - FCOS ms',
                 '% of FCOS end-to-end'], table)


def _accuracy_section(acc: dict, out_dir: str, written: List[str]
                      ) -> List[str]:
    lines = ['## Accuracy at equal budget', '',
             f'Each model trained for **{acc["iters"]} iterations** on the '
             f'built-in dataset ({acc["data"]}), '
             f'{acc["setup"]}; evaluated with CocoMetric on the val split. '
             + ('SOLOv2 predicts no boxes (bbox AP not applicable). '
                if 'solov2' in acc['models'] else '') + 'AP in %.', '']
    table = []
    for m, r in acc['models'].items():
        if not r:
            table.append([model_label(m)] + ['failed'] + ['-'] * 9)
            continue
        b, s = r.get('bbox') or {}, r.get('segm') or {}
        name = model_label(m) + (' (no detections)'
                                 if r.get('no_detections') else '')
        table.append([name, _f(r['train_wall_s'] / 60, 1),
                      _f(r.get('iter_s'), 2)] +
                     [_f(None if b.get(k) is None else 100 * b[k])
                      for k in ('mAP', 'mAP_50', 'mAP_75')] +
                     [_f(None if s.get(k) is None else 100 * s[k])
                      for k in ('mAP', 'mAP_50', 'mAP_75')] +
                     [_f(r.get('final_loss'), 3)])
    lines += _table(['model', 'train min (wall)', 's / iter', 'bbox AP',
                     'bbox AP50', 'bbox AP75', 'segm AP', 'segm AP50',
                     'segm AP75', 'last loss'], table)
    if 'embedmask_boxonly' in acc['models']:
        lines += ['"EmbedMask, box losses only" is a diagnostic row: the same '
                  'model, data and schedule with the mask loss weight set to '
                  '0, so its masks are untrained and only its '
                  'box AP means something: the box AP EmbedMask\'s box head '
                  'reaches at this budget without the mask objectives.', '']
    if 'embedmask_semantic' in acc['models']:
        lines += ['"EmbedMask + semantic loss" is the same model with the '
                  'AdelaiDet design\'s auxiliary semantic focal loss on P3 '
                  '(the COCO recipes\' default; the CPU configs leave it out, '
                  'as the FCOS-repo design and mmdet\'s CondInst do).', '']
    if any(r for r in acc['models'].values()):
        plot_accuracy(acc, osp.join(out_dir, PLOTS['accuracy']))
        written.append(PLOTS['accuracy'])
        lines += [f'![accuracy]({PLOTS["accuracy"]})', '']
    lines += ['Work dirs (configs, logs, checkpoints): ' + ', '.join(
        f'`{r["work_dir"]}`' for r in acc['models'].values() if r), '']
    return lines


def load_results(path: str) -> dict:
    """A run's saved .json, with the detection counts of the post-processing
    sweep turned back into ints (JSON keys are strings)."""
    import json
    with open(path) as f:
        results = json.load(f)
    for speed in results.get('speed', {}).values():
        pp = speed.get('postproc')
        if pp:
            for part in ('total', 'mask_probability', 'paste_masks'):
                pp[part] = {int(k): v for k, v in pp[part].items()}
    return results


def write_report(results: dict, out_path: str) -> List[str]:
    """Writes the Markdown document and its plots; returns the files."""
    out_dir = osp.dirname(osp.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    meta = results['meta']
    written = []
    lines = ['# Benchmarks', '',
             '<!-- generated by tools/benchmark.py: do not edit by hand -->',
             '',
             'Every number on this page was measured by the run below, on one '
             'machine; rerun it to refresh the page.', '',
             '```', meta['command'], '```', '',
             '## Machine', '']
    lines += _table(['', ''], [[k, v] for k, v in meta['machine'].items()])
    lines += ['## Headline ratios', '']
    rows = []
    for t in targets(results):
        op = '<=' if t['upper'] else ('>' if 'AP75' in t['what'] else '>=')
        value = _f(t['value'], 3 if t['unit'] == 'ratio' else 1)
        verdict = {True: '**met**', False: '**not met**',
                   None: 'not measured'}[t['met']]
        rows.append([t['what'], value, f'{op} {t["bound"]:g}', verdict,
                     t['margin']])
    lines += _table(['target', 'measured', 'target', 'verdict', 'margin'],
                    rows)
    lines += ['## Models', '', meta['models_desc'], '']
    for device, speed in results.get('speed', {}).items():
        lines += _speed_section(speed, device, out_dir, written)
        lines += batch_section(speed)
    if results.get('accuracy'):
        lines += _accuracy_section(results['accuracy'], out_dir, written)
    else:
        lines += ['## Accuracy at equal budget', '',
                  'Skipped in this run (`--skip-train`).', '']
    lines += tta_section(results.get('tta'))
    if results.get('deployment'):
        lines += deployment_section(results['deployment'])
    with open(out_path, 'w') as f:
        f.write('\n'.join(lines))
    return [osp.basename(out_path)] + written
