"""Existence checks that turn a missing benchmark file into one error line naming the path."""
import os.path as osp

from .errors import SegDataError


def _hint(key):
    return f" (set it with --opts evaluate.seg.opts \"['{key}=/path']\")"


def check_dataset_cfg(dataset_cfg):
    """dataset_cfg: the resolved ``dataset`` dict of a benchmark config (with ``data_root``); raise SegDataError."""
    root = dataset_cfg.get('data_root', '')
    if not root or not osp.isdir(root):
        raise SegDataError(f'data root not found: {root!r}{_hint("data_root")}')
    for key, rel in sorted(dict(dataset_cfg.get('data_prefix', {})).items()):
        folder = osp.join(root, rel)
        if not osp.isdir(folder):
            raise SegDataError(f'{key} folder not found: {folder}')
    split = dataset_cfg.get('ann_file')
    if split:
        path = osp.join(root, split)
        if not osp.isfile(path):
            raise SegDataError(f'split file not found: {path}')
        with open(path) as f:
            if not any(line.strip() for line in f):
                raise SegDataError(f'split file is empty: {path}')


def check_samples(dataset):
    """Every listed image and its mask exist; raise SegDataError for the first missing file (with a count)."""
    if len(dataset) == 0:
        folder = dataset.data_prefix.get('img_path')
        raise SegDataError(f'no images ending in {dataset.img_suffix!r} found in {folder}')
    missing = []
    for index in range(len(dataset)):
        info = dataset.get_data_info(index)
        for key, what in (('img_path', 'image'), ('seg_map_path', 'mask')):
            path = info.get(key)
            if path is not None and not osp.isfile(path):
                missing.append((what, path, info['img_path']))
    if missing:
        what, path, img = missing[0]
        more = f' ({len(missing) - 1} more files missing)' if len(missing) > 1 else ''
        detail = f' for image {img}' if what == 'mask' else ''
        raise SegDataError(f'{what} not found: {path}{detail}{more}')
