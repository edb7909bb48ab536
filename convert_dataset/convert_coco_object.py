"""COCO-Stuff-164k label PNGs -> COCO-Object semantic maps (the protocol GroupViT/PGSeg report).

Input  ``<label-dir>/{train2017,val2017}/<id>.png``: uint8 COCO-Stuff labels, 0-indexed
       (things 0-90 with COCO's 11 unused ids, stuff 91-181, 255 unlabelled).
Output ``<out-dir>/annotations/{train2017,val2017}/<id>_instanceTrainIds.png``: uint8 maps with
       0 = background and 1-80 = the 80 COCO thing classes in id order.

Published protocol: every id that is not one of the 80 things, the stuff ids and the unlabelled 255
included, becomes 0, so the maps have no ignore pixels. ``--keep-ignore`` keeps 255 as ignore, which
is NOT the published protocol (numbers are not comparable). Ids that COCO-Stuff never uses (the 11 unused
thing ids, 182-254) are reported and written as 0; the published script would leave them unchanged.
"""
import argparse
import os
import os.path as osp
import sys
from functools import partial
from glob import glob
from multiprocessing import Pool

import numpy as np
from PIL import Image
from tqdm import tqdm

SPLIT_LEN = {'train2017': 118287, 'val2017': 5000}
SPLITS = tuple(SPLIT_LEN)
UNUSED_THING_IDS = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)
THING_IDS = tuple(i for i in range(91) if i not in UNUSED_THING_IDS)
STUFF_IDS = tuple(range(91, 182))
IGNORE_ID = 255
OUT_SUFFIX = '_instanceTrainIds.png'


def build_lut(keep_ignore: bool = False) -> np.ndarray:
    """Lookup table [256] uint8: COCO-Stuff label -> COCO-Object label."""
    lut = np.zeros(256, dtype=np.uint8)
    for train_id, stuff_id in enumerate(THING_IDS, start=1):
        lut[stuff_id] = train_id
    if keep_ignore:
        lut[IGNORE_ID] = IGNORE_ID
    return lut


def unexpected_ids(label: np.ndarray) -> list:
    """Label values that COCO-Stuff-164k never uses (sorted)."""
    known = set(THING_IDS) | set(STUFF_IDS) | {IGNORE_ID}
    return sorted(int(v) for v in np.unique(label) if int(v) not in known)


def convert_one(label_path: str, out_dir: str, lut: np.ndarray) -> tuple:
    """Convert one PNG; returns (label_path, error or None, unexpected ids)."""
    try:
        with Image.open(label_path) as img:
            label = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as err:
        return label_path, f'{type(err).__name__}: {err}', []
    if label.ndim != 2 or label.dtype != np.uint8:
        return label_path, f'expected a single-channel uint8 PNG, got shape {label.shape} {label.dtype}', []
    stem = osp.splitext(osp.basename(label_path))[0]
    Image.fromarray(lut[label]).save(osp.join(out_dir, stem + OUT_SUFFIX))
    return label_path, None, unexpected_ids(label)


def list_labels(label_dir: str, split: str) -> list:
    files = glob(osp.join(label_dir, split, '*.png'))
    return sorted(f for f in files if 'TrainIds' not in osp.basename(f))


def missing_labels(image_dir: str, labels: list) -> list:
    """Image stems in ``image_dir`` that have no label PNG (sorted)."""
    if not osp.isdir(image_dir):
        return []
    have = {osp.splitext(osp.basename(f))[0] for f in labels}
    images = {osp.splitext(f)[0] for f in os.listdir(image_dir) if f.lower().endswith('.jpg')}
    return sorted(images - have)


def link_images(coco_root: str, out_dir: str) -> None:
    src, dst = osp.abspath(osp.join(coco_root, 'images')), osp.join(out_dir, 'images')
    if osp.isdir(src) and not osp.exists(dst) and osp.abspath(out_dir) != osp.abspath(coco_root):
        os.makedirs(out_dir, exist_ok=True)
        os.symlink(src, dst, target_is_directory=True)


def convert_split(files: list, out_dir: str, lut: np.ndarray, nproc: int, desc: str) -> list:
    """Convert ``files`` into ``out_dir``; returns the (path, error, unexpected ids) of every file."""
    os.makedirs(out_dir, exist_ok=True)
    work = partial(convert_one, out_dir=out_dir, lut=lut)
    if nproc <= 1:
        return [work(f) for f in tqdm(files, desc=desc)]
    with Pool(nproc) as pool:
        results = tqdm(pool.imap_unordered(work, files, chunksize=64), total=len(files), desc=desc)
        return sorted(results, key=lambda r: r[0])


def report(split: str, results: list, missing: list, max_names: int = 20) -> int:
    """Print problems of one split; returns how many files have a problem."""
    bad = [(p, e) for p, e, _ in results if e]
    odd = [(p, ids) for p, e, ids in results if not e and ids]
    for path, err in bad[:max_names]:
        print(f'ERROR {split}: unreadable {path} ({err})')
    for path, ids in odd[:max_names]:
        print(f'WARN {split}: {path} has ids {ids} that COCO-Stuff never uses; written as background')
    for stem in missing[:max_names]:
        print(f'ERROR {split}: no label PNG for image {stem}.jpg')
    hidden = max(0, len(bad) - max_names) + max(0, len(odd) - max_names) + max(0, len(missing) - max_names)
    if hidden:
        print(f'... and {hidden} more problems in {split}')
    return len(bad) + len(odd) + len(missing)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('coco_root', help='COCO root holding images/{train2017,val2017}')
    parser.add_argument('-o', '--out-dir', help='output root (default: coco_root); images/ is symlinked there')
    parser.add_argument('--label-dir', help='folder holding the stuffthingmaps {train2017,val2017}/*.png '
                        '(default: <coco_root>/annotations, where MMSegmentation unzips them)')
    parser.add_argument('--splits', nargs='+', default=list(SPLITS), choices=SPLITS)
    parser.add_argument('--nproc', type=int, default=min(8, os.cpu_count() or 1), help='worker processes')
    parser.add_argument('--keep-ignore', action='store_true',
                        help='keep 255 as ignore (NOT the published protocol, which maps it to background)')
    parser.add_argument('--expected', type=int,
                        help='expected number of label PNGs over the splits (default: 118,287 train + 5,000 val)')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = args.out_dir or args.coco_root
    label_dir = args.label_dir or osp.join(args.coco_root, 'annotations')
    lut = build_lut(args.keep_ignore)
    labels = {split: list_labels(label_dir, split) for split in args.splits}
    total = sum(len(v) for v in labels.values())
    if total == 0:
        raise SystemExit(f'error: no label PNGs under {label_dir}/{{{",".join(args.splits)}}}/')
    expected = args.expected or sum(SPLIT_LEN[s] for s in args.splits)
    if total != expected:
        counts = ', '.join(f'{s}: {len(v)}' for s, v in labels.items())
        print(f'WARN found {total} label PNGs ({counts}), expected {expected}')
    link_images(args.coco_root, out_dir)
    problems = 0
    for split, files in labels.items():
        results = convert_split(files, osp.join(out_dir, 'annotations', split), lut, args.nproc, split)
        missing = missing_labels(osp.join(args.coco_root, 'images', split), files)
        problems += report(split, results, missing)
        print(f'{split}: wrote {sum(1 for r in results if not r[1])}/{len(files)} maps to '
              f'{osp.join(out_dir, "annotations", split)}')
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
