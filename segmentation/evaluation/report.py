"""Result table and JSON report."""
import json
import os
import os.path as osp

from .benchmark import format_protocol


def _fmt(x):
    return '   n/a' if x is None else f'{x:6.2f}'


def format_table(result):
    """Per-class IoU / Acc, then mIoU, aAcc, mAcc, then the protocol line."""
    names = list(result['per_class'])
    width = max([len(n) for n in names] + [5])
    lines = [f'{"class":<{width}}    IoU    Acc']
    for name in names:
        row = result['per_class'][name]
        lines.append(f'{name:<{width}} {_fmt(row["IoU"])} {_fmt(row["Acc"])}')
    lines.append(f'mIoU {result["mIoU"]:.2f}  aAcc {result["aAcc"]:.2f}  mAcc {result["mAcc"]:.2f}')
    lines.append('protocol: ' + format_protocol(result['protocol']))
    if result['protocol'].get('paper'):
        lines.append('published reference: ' + result['protocol']['paper'])
    return '\n'.join(lines)


def write_report(result, path, **extra):
    """Write `result` (+ extra fields: config, checkpoint, ...) as JSON; -> path."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(extra, **result), f, indent=2)
        f.write('\n')
    return path
