"""YFCC14M images (zips of the ``yfcc100m`` downloader, or a folder) + TSV -> webdataset shards.

``--root`` holds either ``*.zip`` files whose members are ``data/images/<hash[:3]>/<hash[3:6]>/<hash>.jpg``
or, when it has no zip, the images themselves under ``<hash[:3]>/<hash[3:6]>/<hash>.jpg``.
``--info`` is the ``yfcc14m_dataset.tsv`` of ``create_subset.py`` (columns ``file``, ``caption``).
Each kept image becomes one sample ``<hash>.jpg`` + ``<hash>.text`` in ``<shards>/yfcc14m-%06d.tar``;
images without a TSV row, duplicates and captions of fewer than ``--min-words`` words are skipped.
"""
import argparse
import os
import os.path as osp
import sys
import zipfile

import pandas as pd
import webdataset as wds
from tqdm import tqdm

ZIP_PREFIX = 'data/images/'
PATTERN = 'yfcc14m-%06d.tar'


def load_captions(tsv: str) -> dict:
    """``file`` -> ``caption`` from the subset TSV."""
    try:
        df = pd.read_csv(tsv, sep='\t', dtype=str, lineterminator='\n', keep_default_na=False)
    except (OSError, ValueError) as err:
        raise SystemExit(f'error: cannot read {tsv} ({type(err).__name__}: {err})')
    if not {'file', 'caption'} <= set(df.columns):
        raise SystemExit(f'error: {tsv} needs the columns "file" and "caption", has {list(df.columns)}')
    return dict(zip(df['file'], df['caption']))


def iter_zip_images(zip_paths: list):
    """Yield (relative file, jpeg bytes or None) from the downloader's zips."""
    for zip_path in tqdm(zip_paths, desc='zips'):
        try:
            zfile = zipfile.ZipFile(zip_path)
        except (OSError, zipfile.BadZipFile) as err:
            tqdm.write(f'ERROR cannot open {zip_path} ({err})')
            continue
        with zfile:
            for name in tqdm(zfile.namelist(), desc=osp.basename(zip_path), leave=False):
                if name.endswith('/'):
                    continue
                try:
                    data = zfile.read(name)
                except (OSError, zipfile.BadZipFile) as err:
                    tqdm.write(f'ERROR unreadable {zip_path}:{name} ({err})')
                    data = None
                yield name[len(ZIP_PREFIX):] if name.startswith(ZIP_PREFIX) else name, data


def iter_folder_images(root: str):
    """Yield (relative file, jpeg bytes) from an image folder, in sorted order."""
    files = sorted(osp.relpath(osp.join(d, f), root).replace(os.sep, '/')
                   for d, _, names in os.walk(root) for f in names if f.lower().endswith('.jpg'))
    for rel in tqdm(files, desc='images'):
        with open(osp.join(root, rel), 'rb') as f:
            yield rel, f.read()


def write_shards(images, captions: dict, out_dir: str, maxcount: int, maxsize: float, min_words: int) -> dict:
    """Write samples; returns counts of written and skipped images and the number of shards."""
    stats = dict(written=0, no_caption_row=0, short_caption=0, duplicate=0, unreadable=0)
    keys = set()
    with wds.ShardWriter(osp.join(out_dir, PATTERN), maxcount=maxcount, maxsize=maxsize, verbose=0) as sink:
        for rel, data in images:
            key = osp.splitext(osp.basename(rel))[0]
            caption = captions.get(rel)
            reason = ('unreadable' if data is None else 'no_caption_row' if caption is None else
                      'duplicate' if key in keys else
                      'short_caption' if len(caption.split()) < min_words else None)
            if reason:
                stats[reason] += 1
                continue
            keys.add(key)
            sink.write({'__key__': key, 'jpg': data, 'text': caption})
            stats['written'] += 1
        stats['shards'] = sink.shard
    return stats


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--root', required=True, help='folder with the downloaded *.zip files (or images)')
    parser.add_argument('--info', required=True, help='yfcc14m_dataset.tsv from create_subset.py')
    parser.add_argument('--shards', required=True, help='output folder for yfcc14m-%%06d.tar')
    parser.add_argument('--maxsize', type=float, default=1e9, help='max bytes per shard')
    parser.add_argument('--maxcount', type=int, default=100000, help='max samples per shard')
    parser.add_argument('--min-words', type=int, default=2, help='skip captions with fewer words')
    args = parser.parse_args(argv)
    if args.maxsize <= 0 or args.maxcount <= 0:
        parser.error('--maxsize and --maxcount must be positive')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.root):
        raise SystemExit(f'error: --root {args.root} is not a folder')
    captions = load_captions(args.info)
    os.makedirs(args.shards, exist_ok=True)
    zips = sorted(osp.join(args.root, f) for f in os.listdir(args.root) if f.endswith('.zip'))
    images = iter_zip_images(zips) if zips else iter_folder_images(args.root)
    stats = write_shards(images, captions, args.shards, args.maxcount, args.maxsize, args.min_words)
    print(', '.join(f'{k}: {v}' for k, v in stats.items()))
    print(f"config: prefix: yfcc14m-{{000000..{stats['shards'] - 1:06d}}}.tar  length: {stats['written']}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
