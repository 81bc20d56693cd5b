"""docs/benchmarks.md and its PNG plots, written from one run's results only
(every figure in the document comes from the ``results`` dict): the machine,
the headline verdicts against ``targets.TARGETS``, then each section's
renderer (``speed_report``, ``batch_tta_report``, ``accuracy_report``,
``deploy_report``)."""
import os
import os.path as osp
from typing import List, Optional

from .accuracy_report import render_accuracy
from .batch_tta_report import batch_ratio, render_batch, render_tta
from .beyond import render_large_images_and_video
from .deploy_report import render_deployment
from .fmt import num, ratio, table
from .machine import parse_size
from .speed_report import render_speed
from .targets import TARGETS, targets_table, verdict_word

HEADLINE_SIZE = '800x1333'


def headline_size(speed: dict) -> Optional[str]:
    sizes = list(speed.get('latency', {}))
    if HEADLINE_SIZE in sizes:
        return HEADLINE_SIZE
    if not sizes:
        return None
    return max(sizes, key=lambda s: parse_size(s)[0] * parse_size(s)[1])


def headline_values(results: dict) -> dict:
    """The measured value of each headline target (``TARGETS`` key -> value
    or None) in this run's results."""
    values = {}
    speed = results.get('speed', {}).get('cpu')
    if speed:
        size = headline_size(speed)
        median = {m: r['median_ms'] for m, r in
                  speed.get('latency', {}).get(size, {}).items()}
        values['latency_vs_condinst'] = ratio(median.get('embedmask'),
                                              median.get('condinst'))
        values['latency_vs_fcos'] = ratio(median.get('embedmask'),
                                          median.get('fcos'))
        postproc = speed.get('postproc')
        if postproc and postproc['size'] == size and \
                100 in postproc['total']:
            values['postproc_share'] = ratio(
                postproc['total'][100]['median_ms'], median.get('embedmask'))
        step = speed.get('train_step', {}).get('models', {})
        memory = speed.get('memory', {}).get('train', {})
        values['train_step_vs_condinst'] = ratio(
            step.get('embedmask', {}).get('median_ms'),
            step.get('condinst', {}).get('median_ms'))
        values['train_memory_vs_condinst'] = ratio(
            memory.get('embedmask', {}).get('peak_rss_mb'),
            memory.get('condinst', {}).get('peak_rss_mb'))
        if speed.get('batch'):
            values['batch4_vs_batch1'] = batch_ratio(speed)
    tta = results.get('tta')
    if tta:
        rows = tta['rows']
        values['tta_gain'] = 100 * (rows['tta']['segm_mAP'] -
                                    rows['plain']['segm_mAP'])
    acc = (results.get('accuracy') or {}).get('models', {})
    if acc:
        # a model that detected nothing gives no evidence either way
        embedmask, condinst = (
            (acc.get(m) or {}).get('segm')
            if not (acc.get(m) or {}).get('no_detections') else None
            for m in ('embedmask', 'condinst'))
        for key, metric in (('equal_budget_ap', 'mAP'),
                            ('equal_budget_ap75', 'mAP_75')):
            values[key] = None if not (embedmask and condinst) else \
                100 * (embedmask[metric] - condinst[metric])
    return values


def headline_rows(results: dict) -> List[List[str]]:
    """One row per measured headline target: claim, value, bound, verdict,
    margin."""
    speed = results.get('speed', {}).get('cpu') or {}
    size = headline_size(speed) if speed else None
    rows = []
    for key, value in headline_values(results).items():
        target = TARGETS[key]
        met = target.met(value)
        margin = target.margin(value)
        if key == 'train_step_vs_condinst' and value is not None:
            step = speed.get('train_step', {}).get('models', {})
            flops = ratio(*(step.get(m, {}).get('flops', {}).get('gflops')
                            for m in ('embedmask', 'condinst')))
            if flops is not None:
                margin += f' (FLOPs per step: {flops:.3f})'
        claim = target.claim.replace('800x1333', size) \
            if size and key.startswith('latency') else target.claim
        rows.append([claim, num(value, 3 if target.unit == 'ratio' else 1),
                     f'{target.operator} {target.bound:g}',
                     verdict_word(met) if value is not None
                     else 'not measured', margin])
    return rows


# -------------------------------------------------------------------- markdown
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


# sections that `--only-*` measures in a run of their own, by results key
OWN_RUN_SECTIONS = (('deployment', 'Deployment (CPU)'),
                    ('large_images_video', 'Large images and video'))


def provenance(results: dict) -> str:
    """The page's first sentence: which run measured what."""
    own = [title for key, title in OWN_RUN_SECTIONS
           if (results.get(key) or {}).get('command')]
    if not own:
        return ('Every number on this page was measured by the run below, on '
                'one machine; rerun it to refresh the page.')
    return ('The numbers on this page were measured by the run below, on one '
            'machine, except those of ' + ', '.join(f'"{t}"' for t in own) +
            ': each of those sections was measured by a run of its own '
            '(`make bench BENCH_ARGS=--only-...`), and it gives that run\'s '
            'command, machine and date. Compare ratios within a section.')


def write_report(results: dict, out_path: str) -> List[str]:
    """Writes the Markdown document and its plots; returns the files."""
    out_dir = osp.dirname(osp.abspath(out_path))
    os.makedirs(out_dir, exist_ok=True)
    meta = results['meta']
    written = []
    lines = ['# Benchmarks', '',
             '<!-- generated by tools/benchmark.py: do not edit by hand -->',
             '',
             provenance(results), '',
             '```', meta['command'], '```', '',
             '## Machine', '']
    lines += table(['', ''], [[k, v] for k, v in meta['machine'].items()])
    lines += ['## Headline ratios', '']
    lines += table(['target', 'measured', 'bound', 'verdict', 'margin'],
                   headline_rows(results))
    lines += ['## Models', '', meta['models_desc'], '']
    for device, speed in results.get('speed', {}).items():
        lines += render_speed(speed, device, out_dir, written)
        lines += render_batch(speed)
    if results.get('accuracy'):
        lines += render_accuracy(results['accuracy'], out_dir, written)
    else:
        lines += ['## Accuracy at equal budget', '',
                  'Skipped in this run (`--skip-train`).', '']
    lines += render_tta(results.get('tta'))
    if results.get('deployment'):
        lines += render_deployment(results['deployment'])
    lines += render_large_images_and_video(results.get('large_images_video'))
    lines += targets_table()
    with open(out_path, 'w') as f:
        f.write('\n'.join(lines))
    return [osp.basename(out_path)] + written
