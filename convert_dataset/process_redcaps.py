"""RedCaps annotation JSONs -> shuffled parquet url/caption lists for img2dataset.

Each ``*.json`` in the input folder holds ``{"info": ..., "annotations": [{"url", "caption", ...}, ...]}``.
The caption is the cleaned ``caption`` field (not ``raw_caption``), without the subreddit name, as in the
published script. Rows are shuffled with seed 42 and written as columns ``URL`` and ``TEXT``; with
``--num-split N`` row ``i`` goes to ``<output stem>_part{i % N}.parquet``.
"""
import argparse
import json
import os
import os.path as osp
import random
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

URL_COL, TEXT_COL = 'URL', 'TEXT'
SHUFFLE_SEED = 42


def read_annotations(path: str) -> list:
    """(url, caption) pairs of one RedCaps annotation file."""
    try:
        with open(path, encoding='utf-8') as f:
            annotations = json.load(f)['annotations']
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SystemExit(f'error: {path} is not a RedCaps annotation file ({type(err).__name__}: {err})')
    pairs = []
    for i, ann in enumerate(annotations):
        if not isinstance(ann, dict) or 'url' not in ann or 'caption' not in ann:
            raise SystemExit(f'error: {path}: annotation {i} has no "url"/"caption" field')
        pairs.append((ann['url'], ann['caption']))
    return pairs


def output_paths(output: str, num_split) -> list:
    if num_split is None:
        return [output]
    stem, ext = osp.splitext(output)
    return [f'{stem}_part{i}{ext}' for i in range(num_split)]


def write_parquet(pairs: list, path: str) -> None:
    table = pa.table({URL_COL: [u for u, _ in pairs], TEXT_COL: [c for _, c in pairs]})
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    pq.write_table(table, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('input', help='folder with the RedCaps annotation *.json files')
    parser.add_argument('output', help='output parquet path, e.g. redcaps12m_meta/redcaps12m.parquet')
    parser.add_argument('--num-split', type=int, help='write N parquet files instead of one')
    args = parser.parse_args(argv)
    if args.num_split is not None and args.num_split < 1:
        parser.error('--num-split must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.input):
        raise SystemExit(f'error: {args.input} is not a folder')
    files = sorted(f for f in os.listdir(args.input) if f.endswith('.json'))
    if not files:
        raise SystemExit(f'error: no *.json annotation files in {args.input}')
    pairs = []
    for fname in tqdm(files, desc='reading annotations'):
        pairs.extend(read_annotations(osp.join(args.input, fname)))
    random.Random(SHUFFLE_SEED).shuffle(pairs)
    paths = output_paths(args.output, args.num_split)
    for i, path in enumerate(paths):
        part = pairs[i::len(paths)]
        write_parquet(part, path)
        print(f'wrote {len(part)} url/caption pairs to {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
