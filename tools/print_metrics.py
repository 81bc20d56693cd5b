"""Print the COCO bbox/segm AP table of a metrics JSON written by tools/test.py."""
import argparse
import json
import sys

COLUMNS = ('mAP', 'mAP_50', 'mAP_75', 'mAP_s', 'mAP_m', 'mAP_l')


def format_table(metrics: dict) -> str:
    lines = ['| task | ' + ' | '.join(COLUMNS) + ' |',
             '|---|' + '---|' * len(COLUMNS)]
    for task in ('bbox', 'segm'):
        vals = [metrics.get(f'coco/{task}_{c}') for c in COLUMNS]
        lines.append(f'| {task} | ' + ' | '.join(
            '-' if v is None else f'{v:.3f}' for v in vals) + ' |')
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('metrics_json')
    args = parser.parse_args(argv)
    try:
        with open(args.metrics_json) as f:
            metrics = json.load(f)
    except FileNotFoundError:
        sys.exit(f'error: {args.metrics_json} not found; run tools/test.py first')
    print(format_table(metrics))


if __name__ == '__main__':
    main()
