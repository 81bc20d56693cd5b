"""The batched-inference rows and the test-time augmentation section of
docs/benchmarks.md."""
from typing import List, Optional

from .fmt import num, ratio, table
from .machine import repo_path
from .plots import model_label
from .targets import TARGETS

# the input size of the batching target (targets.TARGETS['batch4_vs_batch1'])
BATCH_TARGET_SIZE = '320x320'


def batch_ratio(speed: dict, size: str = BATCH_TARGET_SIZE,
                model: str = 'embedmask') -> Optional[float]:
    """Per-image median latency at the largest batch / at the smallest."""
    batch = speed.get('batch', {})
    rows = batch.get('sizes', {}).get(size, {}).get('models', {}).get(model)
    if not rows:
        return None
    rows = {int(b): r for b, r in rows.items()}
    return ratio(rows[max(rows)]['median_ms'], rows[min(rows)]['median_ms'])


def render_batch(speed: dict) -> List[str]:
    batch = speed.get('batch')
    if not batch or not batch.get('sizes'):
        return []
    sizes = batch['sizes']
    lines = ['### Batched inference: per-image latency', '',
             'Every model on the same batch of random images (shared '
             'backbone + neck and detection count as above), a call on b '
             'images timed and divided by b; all (model, batch) pairs '
             'interleaved, after one untimed call of each (plus one warm-up '
             'round at sizes up to 640x640). The last '
             'columns are the per-image time relative to the smallest batch '
             '(below 1: batching pays). SOLOv2\'s score threshold is '
             'calibrated on the first image of a batch (500 candidates '
             'decoded there), so its other images decode other numbers.', '']
    for size, entry in sizes.items():
        models = entry['models']
        batches = sorted({int(b) for r in models.values() for b in r})
        ref = batches[0]
        header = ['model'] + [f'batch {b} ms/img' for b in batches] + \
            [f'b{b} / b{ref}' for b in batches[1:]]
        body = []
        for m, rows in models.items():
            rows = {int(b): r for b, r in rows.items()}
            body.append(
                [model_label(m)] +
                [num(rows[b]['median_ms']) for b in batches] +
                [num(ratio(rows[b]['median_ms'], rows[ref]['median_ms']), 3)
                 for b in batches[1:]])
        lines += [f'At {size} ({entry["reps"]} timed repetitions):', '']
        lines += table(header, body)
    return lines


def render_tta(tta: Optional[dict]) -> List[str]:
    if not tta:
        return []
    rows = tta['rows']
    plain, largest, merged = rows['plain'], rows['plain_largest'], rows['tta']
    scales = ', '.join(f'{h}x{w}' for h, w in tta['tta_scales'])
    lines = ['## Test-time augmentation (EmbedMask-Lite, built-in val split)',
             '', f'`{repo_path(tta["config"])}` with the checkpoint '
             f'`{repo_path(tta["checkpoint"])}`'
             f' on the {plain["images"]} val images: as configured (test '
             f'scale {tta["test_scale"][0]}x{tta["test_scale"][1]}), at the '
             f'TTA\'s largest scale alone, and with `{tta["merge"]}` over '
             f'{tta["views"]} views (scales {scales}, each with and without '
             'a horizontal flip; `tools/test.py --tta`). Seconds per image '
             'are the whole test loop\'s (loading and evaluation included), '
             'measured in this run.', '']
    lines += table(['', ''], [[k, v] for k, v in tta['machine'].items()])
    header = ['testing', 'segm mAP', 'AP50', 'AP75', 'AP_s', 'AP_m', 'AP_l',
              'bbox mAP', 's / image', 'time vs plain']
    body = []
    for name, label in (('plain', 'plain (test scale)'),
                        ('plain_largest', 'plain at {}x{}'.format(
                            *tta['largest'])),
                        ('tta', f'TTA, {tta["views"]} views')):
        r = rows[name]
        body.append([label] + [num(r[k], 3) for k in (
            'segm_mAP', 'segm_mAP_50', 'segm_mAP_75', 'segm_mAP_s',
            'segm_mAP_m', 'segm_mAP_l', 'bbox_mAP')] +
            [num(r['s_per_img'], 3),
             num(ratio(r['s_per_img'], plain['s_per_img']), 2) + 'x'])
    lines += table(header, body)
    gain = merged['segm_mAP'] - plain['segm_mAP']
    target = TARGETS['tta_gain']  # in AP points
    over_scale = merged['segm_mAP'] - largest['segm_mAP']
    lines += [f'TTA adds {gain:+.3f} segm mAP to plain testing (target '
              f'+{target.bound / 100:g}: ' + ('met' if target.met(100 * gain)
                                            else 'not met') +
              f') and {over_scale:+.3f} to testing at its largest scale '
              'alone (' + ('the merge of the views adds to what the larger '
                           'scale gives' if over_scale > 0 else
                           'the larger scale alone does as well') +
              f'); bbox mAP {merged["bbox_mAP"] - plain["bbox_mAP"]:+.3f}.',
              '']
    return lines
