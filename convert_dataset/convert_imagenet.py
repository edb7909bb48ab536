"""ImageNet validation images -> ``imagenet-val-{000000..NNNNNN}.tar`` webdataset shards (``jpg`` + ``cls``).

Two layouts are read:
- class subfolders ``<root>/<wnid>/*.JPEG`` (torchvision ImageFolder, e.g. after ``valprep.sh``);
- a flat ``<root>/ILSVRC2012_val_*.JPEG`` with ``--labels``: Kaggle's ``LOC_val_solution.csv``
  (``ImageId,PredictionString``) or lines ``<file> <wnid or class index>``.
The class index written to ``cls`` is the position of the wnid in ``--classes`` (first word per line, e.g.
``LOC_synset_mapping.txt``) or, without it, in the sorted wnids found: the standard order of the 1000
ImageNet class names. The devkit's ``ILSVRC2012_validation_ground_truth.txt`` uses another order and is refused.
"""
import argparse
import csv
import os
import os.path as osp
import sys
from functools import partial
from multiprocessing import Pool

import webdataset as wds
from tqdm import tqdm

IMAGE_EXTS = ('.jpeg', '.jpg', '.png')
NUM_IMAGENET_CLASSES = 1000


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def scan_subfolders(root: str) -> list:
    """[(path, wnid)] of a class-subfolder layout, sorted by path."""
    items = []
    for wnid in sorted(d for d in os.listdir(root) if osp.isdir(osp.join(root, d))):
        items += [(osp.join(root, wnid, f), wnid) for f in sorted(os.listdir(osp.join(root, wnid))) if is_image(f)]
    return items


def read_label_rows(path: str) -> list:
    """[(file stem, label string)] from a Kaggle solution CSV or a whitespace-separated list."""
    with open(path, newline='', encoding='utf-8') as f:
        first = f.readline()
        f.seek(0)
        if first.startswith('ImageId,'):
            return [(r['ImageId'], r['PredictionString'].split()[0]) for r in csv.DictReader(f)]
        rows = [line.split() for line in f if line.strip()]
    if any(len(r) < 2 for r in rows):
        raise SystemExit(f'error: {path}: every line needs "<file> <label>"; the devkit ground truth '
                         '(one ILSVRC2012_ID per line) is not in the standard class order, use '
                         'LOC_val_solution.csv or the class-subfolder layout')
    return [(osp.splitext(osp.basename(r[0]))[0], r[1]) for r in rows]


def scan_flat(root: str, labels_path: str) -> list:
    """[(path, label string)] of a flat folder, sorted by path."""
    labels = dict(read_label_rows(labels_path))
    items = []
    for f in sorted(f for f in os.listdir(root) if is_image(f)):
        stem = osp.splitext(f)[0]
        if stem not in labels:
            raise SystemExit(f'error: {labels_path} has no label for {f}')
        items.append((osp.join(root, f), labels[stem]))
    return items


def class_indices(labels: list, classes_path) -> dict:
    """label string -> class index (ints are taken as they are)."""
    if all(label.isdigit() for label in labels):
        return {label: int(label) for label in set(labels)}
    if classes_path:
        with open(classes_path, encoding='utf-8') as f:
            wnids = [line.split()[0] for line in f if line.strip()]
    else:
        wnids = sorted(set(labels))
    if len(wnids) != NUM_IMAGENET_CLASSES:
        source = f'the order of {classes_path}' if classes_path else \
            'the sorted wnids found here; pass --classes LOC_synset_mapping.txt for the full list'
        print(f'WARN {len(wnids)} classes instead of {NUM_IMAGENET_CLASSES}: indices follow {source}')
    index = {w: i for i, w in enumerate(wnids)}
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise SystemExit(f'error: labels {unknown[:5]} are not in {classes_path}')
    return index


def split_evenly(items: list, num_shards: int) -> list:
    """``num_shards`` contiguous chunks whose sizes differ by at most one."""
    base, extra = divmod(len(items), num_shards)
    bounds = [i * base + min(i, extra) for i in range(num_shards + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(num_shards)]


def write_shard(job: tuple, out_dir: str, prefix: str) -> int:
    """job = (shard index, [(path, class index)]); returns the number of samples written."""
    shard, samples = job
    with wds.TarWriter(osp.join(out_dir, f'{prefix}-{shard:06d}.tar')) as sink:
        for path, cls in samples:
            ext = 'png' if path.lower().endswith('.png') else 'jpg'
            with open(path, 'rb') as f:
                sink.write({'__key__': osp.splitext(osp.basename(path))[0], ext: f.read(), 'cls': int(cls)})
    return len(samples)


def run_jobs(work, jobs: list, nproc: int) -> int:
    """Run ``work`` over ``jobs`` (in ``nproc`` processes when > 1); returns the sum of the results."""
    if nproc <= 1:
        return sum(tqdm(map(work, jobs), total=len(jobs), desc='shards'))
    with Pool(nproc) as pool:
        return sum(tqdm(pool.imap(work, jobs), total=len(jobs), desc='shards'))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('root', help='ImageNet val folder (class subfolders, or flat with --labels)')
    parser.add_argument('out_dir', help='output folder for the shards')
    parser.add_argument('--labels', help='labels of a flat folder: LOC_val_solution.csv or "<file> <label>" lines')
    parser.add_argument('--classes', help='class list, first word per line a wnid (e.g. LOC_synset_mapping.txt)')
    parser.add_argument('--num-shards', type=int, default=50)
    parser.add_argument('--prefix', default='imagenet-val', help='shard name prefix')
    parser.add_argument('--nproc', type=int, default=1, help='shards written in parallel')
    args = parser.parse_args(argv)
    if args.num_shards < 1:
        parser.error('--num-shards must be >= 1')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not osp.isdir(args.root):
        raise SystemExit(f'error: {args.root} is not a folder')
    items = scan_flat(args.root, args.labels) if args.labels else scan_subfolders(args.root)
    if not items:
        raise SystemExit(f'error: no images in {args.root}' + ('' if args.labels else
                                                               ' class subfolders (flat folder? pass --labels)'))
    if len({osp.splitext(osp.basename(p))[0] for p, _ in items}) != len(items):
        raise SystemExit(f'error: {args.root} holds images with the same file name; keys must be unique')
    if len(items) < args.num_shards:
        raise SystemExit(f'error: {len(items)} images cannot fill --num-shards {args.num_shards}')
    index = class_indices([label for _, label in items], args.classes)
    samples = [(path, index[label]) for path, label in items]
    os.makedirs(args.out_dir, exist_ok=True)
    jobs = list(enumerate(split_evenly(samples, args.num_shards)))
    work = partial(write_shard, out_dir=args.out_dir, prefix=args.prefix)
    written = run_jobs(work, jobs, args.nproc)
    print(f'wrote {written} images of {len({c for _, c in samples})} classes to {args.num_shards} shards')
    print(f'config: prefix: {args.prefix}-{{000000..{args.num_shards - 1:06d}}}.tar  length: {written}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
