"""The speed sections of docs/benchmarks.md (``speed.py``'s results):
inference latency and memory per input size, the training step, EmbedMask's
mask post-processing against the number of detections, and its predict path
next to FCOS's stage by stage."""
import os.path as osp
from typing import List

from .fmt import num, ratio, table
from .plots import (model_label, plot_latency, plot_name, plot_postproc,
                    plot_train)
from .step_profile import section_lines as step_profile_lines


def render_speed(speed: dict, device: str, out_dir: str,
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
        embedmask_ms = rows.get('embedmask', {}).get('median_ms')
        mem = speed.get('memory', {}).get('infer', {}).get(size, {})
        lines.append(f'### Inference at {size}')
        lines.append('')
        header = ['model', 'dets', 'median ms', 'p90 ms',
                  'EmbedMask / model', 'peak RSS MiB', 'RSS after build MiB']
        if device == 'cuda':
            header.append('peak CUDA MiB')
        body = []
        for m, r in rows.items():
            row = [model_label(m), r['dets'], num(r['median_ms']),
                   num(r['p90_ms']),
                   num(ratio(embedmask_ms, r['median_ms']), 3),
                   num(mem.get(m, {}).get('peak_rss_mb'), 0),
                   num(mem.get(m, {}).get('rss_built_mb'), 0)]
            if device == 'cuda':
                row.append(num(mem.get(m, {}).get('cuda_peak_mb'), 0))
            body.append(row)
        lines += table(header, body)
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
        condinst_ms = ts['models'].get('condinst', {}).get('median_ms')
        condinst_rss = mem.get('condinst', {}).get('peak_rss_mb')
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
        condinst_saved = ts['models'].get('condinst', {}).get('saved_mb')
        header = ['model', 'median s', 'p90 s', 'model / CondInst',
                  'peak RSS MiB', 'RSS after build MiB', 'peak / CondInst',
                  'saved for backward MiB', 'saved / CondInst']
        if device == 'cuda':
            header.append('peak CUDA MiB')
        body = []
        for m, r in ts['models'].items():
            mm = mem.get(m, {})
            row = [model_label(m), num(r['median_ms'] / 1e3, 2),
                   num(r['p90_ms'] / 1e3, 2),
                   num(ratio(r['median_ms'], condinst_ms), 3),
                   num(mm.get('peak_rss_mb'), 0), num(mm.get('rss_built_mb'), 0),
                   num(ratio(mm.get('peak_rss_mb'), condinst_rss), 3),
                   num(r.get('saved_mb'), 0),
                   num(ratio(r.get('saved_mb'), condinst_saved), 3)]
            if device == 'cuda':
                row.append(num(mm.get('cuda_peak_mb'), 0))
            body.append(row)
        lines += table(header, body)
        lines += ['"Saved for backward": the tensors autograd keeps from one '
                  'training forward (each storage once), the deterministic '
                  'part of the peak that RSS measures with allocator noise.']
        embedmask_mmdet_focal = ts.get('embedmask_mmdet_focal_saved_mb')
        if embedmask_mmdet_focal is not None:
            lines[-1] += (
                ' EmbedMask\'s configs use `FusedFocalLoss` (mmdet\'s sigmoid '
                'focal loss with the same values and gradients, one saved '
                'tensor) for its classification and semantic losses; with '
                f'mmdet\'s `FocalLoss`, as CondInst uses, it would keep '
                f'{embedmask_mmdet_focal:.0f} MiB'
                + (f' ({ratio(embedmask_mmdet_focal, condinst_saved):.3f} x CondInst).'
                   if condinst_saved else '.'))
        lines += ['']
        name = plot_name('train', device)
        plot_train(speed, osp.join(out_dir, name), device)
        written.append(name)
        lines += [f'![training step]({name})', '']
        lines += step_profile_lines(ts, model_label)
    pp = speed.get('postproc')
    if pp:
        embedmask_ms = lat.get(pp['size'], {}).get('embedmask', {}).get(
            'median_ms')
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
        body = []
        for n in sorted(pp['total']):
            tot = pp['total'][n]
            body.append([n, num(tot['median_ms']), num(tot['p90_ms']),
                          num(pp['mask_probability'][n]['median_ms']),
                          num(pp['paste_masks'][n]['median_ms']),
                          num(tot['median_ms'] / n, 2),
                         num(None if not embedmask_ms else
                             100 * tot['median_ms'] / embedmask_ms)])
        lines += table(['N', 'total median ms', 'total p90 ms',
                         'mask_probability ms', 'paste_masks ms',
                         'ms / detection', '% of EmbedMask end-to-end'],
                        body)
        lines += [f'Least-squares line: time = {num(fit["intercept"], 2)} ms + '
                  f'{num(fit["slope"], 3)} ms x N, R^2 = {num(fit["r2"], 4)} '
                  f'({"linear" if fit["r2"] >= 0.98 else "not linear"} in N '
                  'at R^2 >= 0.98).', '']
        name = plot_name('postproc', device)
        plot_postproc(pp, embedmask_ms, osp.join(out_dir, name), device)
        written.append(name)
        lines += [f'![post-processing vs detections]({name})', '']
    if speed.get('breakdown'):
        lines += render_breakdown(speed['breakdown'])
    return lines


def render_breakdown(bd: dict) -> List[str]:
    """EmbedMask's predict path next to FCOS's, stage by stage."""
    from .measure import BREAKDOWN_PARTS
    embedmask, fcos = bd['models']['embedmask'], bd['models']['fcos']
    fcos_total = fcos['end to end']['median_ms']

    def ms(model, part):
        return model.get(part, {}).get('median_ms')

    body = []
    for part in BREAKDOWN_PARTS + ('end to end', ):
        a, b = ms(embedmask, part), ms(fcos, part)
        diff = (a or 0.) - (b or 0.)
        body.append([part, num(a), num(b), num(diff),
                      num(100 * diff / fcos_total, 1)])
    parts_sum = sum(ms(embedmask, p) or 0. for p in BREAKDOWN_PARTS)
    return [f'### Where EmbedMask\'s time goes, next to FCOS ({bd["size"]})',
            '', 'Each stage of the predict path timed on its own (median of '
            f'{bd["reps"]} repetitions, every stage of both models interleaved '
            'in one loop, with the end-to-end runs in the same loop); '
            'the column "EmbedMask - FCOS" is EmbedMask\'s extra time, also as '
            'a share of FCOS\'s end-to-end time. The EmbedMask stages sum to '
            f'{num(parts_sum)} ms against '
            f'{num(ms(embedmask, "end to end"))} ms end to end.', ''] + table(
                ['stage', 'EmbedMask ms', 'FCOS ms', 'EmbedMask - FCOS ms',
                 '% of FCOS end-to-end'], body)

