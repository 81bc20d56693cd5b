"""The equal-budget accuracy section of docs/benchmarks.md
(``accuracy.py``'s results)."""
import os.path as osp
from typing import List

from .fmt import num, table
from .plots import PLOTS, model_label, plot_accuracy


def render_accuracy(acc: dict, out_dir: str, written: List[str]
                      ) -> List[str]:
    lines = ['## Accuracy at equal budget', '',
             f'Each model trained for **{acc["iters"]} iterations** on the '
             f'built-in dataset ({acc["data"]}), '
             f'{acc["setup"]}; evaluated with CocoMetric on the val split. '
             + ('SOLOv2 predicts no boxes (bbox AP not applicable). '
                if 'solov2' in acc['models'] else '') + 'AP in %.', '']
    body = []
    for m, r in acc['models'].items():
        if not r:
            body.append([model_label(m)] + ['failed'] + ['-'] * 9)
            continue
        b, s = r.get('bbox') or {}, r.get('segm') or {}
        name = model_label(m) + (' (no detections)'
                                 if r.get('no_detections') else '')
        body.append([name, num(r['train_wall_s'] / 60, 1),
                      num(r.get('iter_s'), 2)] +
                     [num(None if b.get(k) is None else 100 * b[k])
                      for k in ('mAP', 'mAP_50', 'mAP_75')] +
                     [num(None if s.get(k) is None else 100 * s[k])
                      for k in ('mAP', 'mAP_50', 'mAP_75')] +
                     [num(r.get('final_loss'), 3)])
    lines += table(['model', 'train min (wall)', 's / iter', 'bbox AP',
                     'bbox AP50', 'bbox AP75', 'segm AP', 'segm AP50',
                     'segm AP75', 'last loss'], body)
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
