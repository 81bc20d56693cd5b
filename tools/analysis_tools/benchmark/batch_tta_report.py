"""The batched-inference rows and the test-time augmentation section of
docs/benchmarks.md."""
from typing import List, Optional

from .fmt import num as _f
from .fmt import ratio as _ratio
from .fmt import table as _table
from .plots import model_label

BATCH_TARGET = 0.9  # EmbedMask per-image time at batch 4 / batch 1
BATCH_TARGET_SIZE = '320x320'
TTA_TARGET = 0.01  # segm mAP gain of TTA over plain testing


def batch_ratio(speed: dict, size: str = BATCH_TARGET_SIZE,
                model: str = 'embedmask') -> Optional[float]:
    """Per-image median latency at the largest batch / at the smallest."""
    batch = speed.get('batch', {})
    rows = batch.get('sizes', {}).get(size, {}).get('models', {}).get(model)
    if not rows:
        return None
    rows = {int(b): r for b, r in rows.items()}
    return _ratio(rows[max(rows)]['median_ms'], rows[min(rows)]['median_ms'])


def batch_section(speed: dict) -> List[str]:
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
        table = []
        for m, rows in models.items():
            rows = {int(b): r for b, r in rows.items()}
            table.append(
                [model_label(m)] +
                [_f(rows[b]['median_ms']) for b in batches] +
                [_f(_ratio(rows[b]['median_ms'], rows[ref]['median_ms']), 3)
                 for b in batches[1:]])
        lines += [f'At {size} ({entry["reps"]} timed repetitions):', '']
        lines += _table(header, table)
    return lines


def tta_section(tta: Optional[dict]) -> List[str]:
    if not tta:
        return []
    rows = tta['rows']
    plain, largest, merged = rows['plain'], rows['plain_largest'], rows['tta']
    scales = ', '.join(f'{h}x{w}' for h, w in tta['tta_scales'])
    lines = ['## Test-time augmentation (EmbedMask-Lite, built-in val split)',
             '', f'`{tta["config"]}` with the checkpoint `{tta["checkpoint"]}`'
             f' on the {plain["images"]} val images: as configured (test '
             f'scale {tta["test_scale"][0]}x{tta["test_scale"][1]}), at the '
             f'TTA\'s largest scale alone, and with `{tta["merge"]}` over '
             f'{tta["views"]} views (scales {scales}, each with and without '
             'a horizontal flip; `tools/test.py --tta`). Seconds per image '
             'are the whole test loop\'s (loading and evaluation included), '
             'measured in this run.', '']
    lines += _table(['', ''], [[k, v] for k, v in tta['machine'].items()])
    header = ['testing', 'segm mAP', 'AP50', 'AP75', 'AP_s', 'AP_m', 'AP_l',
              'bbox mAP', 's / image', 'time vs plain']
    table = []
    for name, label in (('plain', 'plain (test scale)'),
                        ('plain_largest', 'plain at {}x{}'.format(
                            *tta['largest'])),
                        ('tta', f'TTA, {tta["views"]} views')):
        r = rows[name]
        table.append([label] + [_f(r[k], 3) for k in (
            'segm_mAP', 'segm_mAP_50', 'segm_mAP_75', 'segm_mAP_s',
            'segm_mAP_m', 'segm_mAP_l', 'bbox_mAP')] +
            [_f(r['s_per_img'], 3),
             _f(_ratio(r['s_per_img'], plain['s_per_img']), 2) + 'x'])
    lines += _table(header, table)
    gain = merged['segm_mAP'] - plain['segm_mAP']
    over_scale = merged['segm_mAP'] - largest['segm_mAP']
    lines += [f'TTA adds {gain:+.3f} segm mAP to plain testing (target '
              f'+{TTA_TARGET}: ' + ('met' if gain >= TTA_TARGET else
                                     'not met') +
              f') and {over_scale:+.3f} to testing at its largest scale '
              'alone (' + ('the merge of the views adds to what the larger '
                           'scale gives' if over_scale > 0 else
                           'the larger scale alone does as well') +
              f'); bbox mAP {merged["bbox_mAP"] - plain["bbox_mAP"]:+.3f}.',
              '']
    return lines
