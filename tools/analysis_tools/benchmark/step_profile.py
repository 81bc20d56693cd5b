"""Where a training step's time goes: its FLOPs (``torch.utils.flop_counter``,
deterministic) and, on CPU, the profiler's operator time split by kind
(``torch.profiler``), with the markdown section that reports both."""
from collections import defaultdict
from typing import Callable, Dict, List

from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from .fmt import ratio, table

# operator kinds, by the first matching substring of the lower-cased op name
KINDS = (('convolution', ('conv', )),
         ('normalization', ('batch_norm', 'group_norm', 'layer_norm')),
         ('sort / top-k', ('aten::sort', 'aten::topk')))
OTHER = 'other'
TOP_OTHER = 5


def op_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return OTHER


def step_flops(step: Callable) -> dict:
    """GFLOPs of one call of ``step`` (forward + backward), total and in
    convolutions; counted per aten op, so functional convs count too."""
    with FlopCounterMode(display=False) as counter:
        step()
    by_op = {str(op): n for op, n in
             counter.get_flop_counts().get('Global', {}).items()}
    conv = sum(n for op, n in by_op.items() if 'conv' in op)
    return dict(gflops=counter.get_total_flops() / 1e9,
                conv_gflops=conv / 1e9)


def step_time_split(step: Callable) -> dict:
    """Self CPU time (s) of the operators of one call of ``step``, by kind,
    and the largest non-convolution operators."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    kinds: Dict[str, float] = defaultdict(float)
    others = []
    for event in prof.key_averages():
        seconds = event.self_cpu_time_total / 1e6
        if seconds <= 0:
            continue
        kind = op_kind(event.key)
        kinds[kind] += seconds
        if kind != 'convolution':
            others.append([event.key, seconds])
    others.sort(key=lambda item: -item[1])
    return dict(op_s=sum(kinds.values()), kinds=dict(kinds),
                top_other=others[:TOP_OTHER])


def section_lines(ts: dict, label: Callable[[str], str]) -> List[str]:
    """The "where the time goes" table of a run's ``train_step`` results."""
    models = {m: r for m, r in ts['models'].items() if 'flops' in r}
    if not models:
        return []
    ci = models.get('condinst', {})
    ci_flops = ci.get('flops', {}).get('gflops')
    split = any('op_time' in r for r in models.values())
    kinds = [k for k, _ in KINDS] + [OTHER]
    lines = ['#### Where the training step goes', '',
             'FLOPs of one step (forward + backward) counted per operator by '
             '`torch.utils.flop_counter` (operators it has no formula for, '
             'element-wise ones and mmcv\'s RoIAlign among them, count 0)' + (
                 '; operator time: self CPU time per operator in one more '
                 'step under `torch.profiler` (a single step, so it carries '
                 'the same noise as one timed step)' if split else '') + '.',
             '']
    header = ['model', 'GFLOPs', 'GFLOPs / CondInst', 'in convolutions']
    if split:
        header += ['op time s'] + [f'{k} s' for k in kinds] + [
            'convolution share', 'largest other operators (ms)']
    rows = []
    for m, r in models.items():
        fl = r['flops']
        row = [label(m), f'{fl["gflops"]:,.1f}',
               '-' if ratio(fl['gflops'], ci_flops) is None else
               f'{fl["gflops"] / ci_flops:.3f}',
               f'{100 * fl["conv_gflops"] / fl["gflops"]:.1f} %'
               if fl['gflops'] else '-']
        if split:
            ot = r.get('op_time')
            if ot:
                conv_share = ot['kinds'].get('convolution', 0.) / ot['op_s']
                row += [f'{ot["op_s"]:.2f}'] + [
                    f'{ot["kinds"].get(k, 0.):.2f}' for k in kinds] + [
                    f'{100 * conv_share:.1f} %',
                    ', '.join(f'`{name}` {1e3 * s:.0f}'
                              for name, s in ot['top_other'][:3])]
            else:
                row += ['-'] * (len(kinds) + 3)
        rows.append(row)
    lines += table(header, rows)
    em = models.get('embedmask')
    if em and ci_flops:
        text = (f'EmbedMask / CondInst per training step: FLOPs '
                f'{em["flops"]["gflops"] / ci_flops:.3f}')
        eo, co = em.get('op_time'), ci.get('op_time')
        if eo and co:
            conv = ratio(eo['kinds'].get('convolution'),
                          co['kinds'].get('convolution'))
            rest = ratio(eo['op_s'] - eo['kinds'].get('convolution', 0.),
                          co['op_s'] - co['kinds'].get('convolution', 0.))
            text += (f', convolution time {conv:.3f}, time of all other '
                     f'operators {rest:.3f}' if conv and rest else '')
        step = ratio(em.get('median_ms'), ci.get('median_ms'))
        if step is not None:
            text += f'; measured step time {step:.3f} (table above)'
        lines += [text + '.', '']
    return lines
