"""Check the webdataset shards a config trains and evaluates on, before any GPU time is spent.

For every dataset in ``data.dataset.train`` and ``data.dataset.val`` it expands ``path/prefix`` (braces, or a
glob when the prefix has ``*?[``), counts the shards found and the samples in them, compares the count with
``length``, and decodes every image (PIL) and every ``cls`` label. One table is printed, followed by one WARN/ERROR line per problem.
Exit status: 0 when everything matches, 1 when anything is missing, unreadable or differs from ``length``
(``length`` sets the number of steps per epoch, so a wrong value silently changes the schedule).

    python tools/check_data.py configs/group_vit_gcc_yfcc_30e.yml [--opts data.dataset.meta.gcc3m.path=DIR]
"""
import argparse
import io
import os
import os.path as osp
import sys
import tarfile
from collections import defaultdict
from functools import partial
from glob import glob
from multiprocessing import Pool

from braceexpand import braceexpand
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run as a script from anywhere
from utils.config import ConfigError, apply_opts, load_config  # noqa: E402

IMAGE_EXTS = ('jpg', 'jpeg', 'png')
TARGET_EXTS = {'img_txt_pair': ('txt', 'text'), 'img_cls_pair': ('cls',)}
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def split_key(name: str) -> tuple:
    """Tar member name -> (sample key, extension) the way webdataset groups files."""
    directory, base = osp.split(name)
    stem, _, ext = base.partition('.')
    return osp.join(directory, stem), ext.lower()


def check_image(data: bytes) -> str:
    """'' when PIL decodes ``data`` fully, else the error."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
    except IMAGE_ERRORS as err:
        return f'{type(err).__name__}: {err}'
    return ''


def check_target(ext: str, data: bytes) -> str:
    if ext == 'cls':
        text = data.decode('ascii', errors='replace').strip()
        return '' if text.lstrip('-').isdigit() else f'cls {text!r} is not an integer'
    return ''


def check_sample(files: dict, target_exts: tuple, decode: bool) -> str:
    """files: ext -> bytes of one sample; '' when it is usable, else what is wrong."""
    image = next((e for e in IMAGE_EXTS if e in files), None)
    target = next((e for e in target_exts if e in files), None)
    if image is None or target is None:
        return f"missing {'image' if image is None else '/'.join(target_exts)} (has {sorted(files)})"
    if not decode:
        return ''
    return check_image(files[image]) or check_target(target, files[target])


def scan_shard(path: str, target_exts: tuple, decode: bool) -> tuple:
    """-> (path, #usable samples, [bad sample descriptions], shard error or '')."""
    samples = defaultdict(dict)
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                if member.isfile():
                    key, ext = split_key(member.name)
                    samples[key][ext] = tar.extractfile(member).read() if decode else b''
    except (OSError, tarfile.TarError, EOFError) as err:
        return path, 0, [], f'{type(err).__name__}: {err}'
    good, bad = 0, []
    for key, files in samples.items():
        problem = check_sample(files, target_exts, decode)
        if problem:
            bad.append(f'{osp.basename(path)}:{key}: {problem}')
        else:
            good += 1
    return path, good, bad, ''


def check_dataset(name: str, meta, decode: bool, nproc: int) -> dict:
    """Shard and sample counts of one ``data.dataset.meta`` entry."""
    if meta.type not in TARGET_EXTS:
        raise SystemExit(f"error: data.dataset.meta.{name}.type '{meta.type}' is not one of {sorted(TARGET_EXTS)}")
    pattern = osp.join(str(meta.path), str(meta.prefix))
    expected = sorted(glob(pattern)) if any(c in str(meta.prefix) for c in '*?[') else list(braceexpand(pattern))
    found = [p for p in expected if osp.isfile(p)]
    on_disk = set(glob(osp.join(meta.path, '*.tar')))
    work = partial(scan_shard, target_exts=TARGET_EXTS[meta.type], decode=decode)
    if nproc > 1 and len(found) > 1:
        with Pool(nproc) as pool:
            scans = list(tqdm(pool.imap(work, found), total=len(found), desc=name, leave=False))
    else:
        scans = [work(p) for p in tqdm(found, desc=name, leave=False)]
    return dict(
        name=name, path=meta.path, length=int(meta.length), expected_shards=len(expected),
        found_shards=len(found), missing=[p for p in expected if p not in set(found)],
        unmatched=sorted(on_disk - set(expected)), samples=sum(s[1] for s in scans),
        bad=[b for s in scans for b in s[2]], broken=[(s[0], s[3]) for s in scans if s[3]])


def problems(r: dict, max_lines: int) -> list:
    """WARN/ERROR lines of one dataset result."""
    name, lines = r['name'], []
    if r['found_shards'] == 0:
        lines.append(f"ERROR {name}: no shard of the prefix exists under {r['path']}")
    lines += [f'ERROR {name}: unreadable shard {p} ({e})' for p, e in r['broken'][:max_lines]]
    lines += [f'ERROR {name}: bad sample {b}' for b in r['bad'][:max_lines]]
    if len(r['bad']) > max_lines:
        lines.append(f"ERROR {name}: ... {len(r['bad']) - max_lines} more bad samples")
    if r['missing'] and r['found_shards']:
        shown = ', '.join(osp.basename(p) for p in r['missing'][:3])
        lines.append(f"WARN {name}: {len(r['missing'])}/{r['expected_shards']} shards of the prefix are missing "
                     f"({shown}{', ...' if len(r['missing']) > 3 else ''})")
    if r['unmatched']:
        lines.append(f"WARN {name}: {len(r['unmatched'])} .tar files in {r['path']} are not matched by the prefix "
                     f"(e.g. {osp.basename(r['unmatched'][0])})")
    if r['samples'] != r['length'] and r['found_shards']:
        lines.append(f"WARN {name}: {r['samples']} usable samples but length is {r['length']}: the epoch length "
                     f"and schedule follow `length`; set --opts data.dataset.meta.{name}.length={r['samples']} "
                     'or fix the config')
    return lines


def print_table(results: list) -> None:
    header = ('dataset', 'shards found/expected', 'samples', 'length', 'bad samples', 'status')
    rows = [(r['name'], f"{r['found_shards']}/{r['expected_shards']}", str(r['samples']), str(r['length']),
             str(len(r['bad']) + len(r['broken'])), 'OK' if not problems(r, 0) else 'CHECK') for r in results]
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]
    for row in (header, *rows):
        print('  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def load(cfg_path: str, opts) -> DictConfig:
    try:
        return apply_opts(load_config(cfg_path), opts)
    except ConfigError as err:
        raise SystemExit(f'error: {err}')


def dataset_names(cfg, only) -> list:
    names = list(dict.fromkeys([*cfg.data.dataset.get('train', []), *cfg.data.dataset.get('val', [])]))
    for name in only or []:
        if name not in names:
            raise SystemExit(f"error: dataset '{name}' is not in data.dataset.train/val ({names})")
    return [n for n in names if not only or n in only]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('cfg', help='training config (yml)')
    parser.add_argument('--opts', nargs='+', default=[], help="config overrides 'a.b=c'")
    parser.add_argument('--datasets', nargs='+', help='check only these datasets')
    parser.add_argument('--no-decode', action='store_true', help='count samples only, do not decode images')
    parser.add_argument('--nproc', type=int, default=os.cpu_count() or 1, help='shards read in parallel')
    parser.add_argument('--max-lines', type=int, default=10, help='problem lines shown per kind and dataset')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load(args.cfg, args.opts)
    results = []
    for name in dataset_names(cfg, args.datasets):
        if name not in cfg.data.dataset.meta:
            raise SystemExit(f"error: '{name}' is listed in data.dataset but has no data.dataset.meta.{name}")
        results.append(check_dataset(name, cfg.data.dataset.meta[name], not args.no_decode, args.nproc))
    print_table(results)
    lines = [line for r in results for line in problems(r, args.max_lines)]
    for line in lines:
        print(line)
    return 1 if lines else 0


if __name__ == '__main__':
    sys.exit(main())
