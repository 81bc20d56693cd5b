"""Number and table formatting shared by the benchmark doc's sections."""
from typing import List


def num(x, digits=1) -> str:
    if x is None or x != x:  # None or NaN
        return '-'
    return f'{x:,.{digits}f}'


def table(header: List[str], rows: List[List[str]]) -> List[str]:
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '|'.join('---' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return lines + ['']


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b
