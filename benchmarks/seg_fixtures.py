"""Small copies of ImageNet-S and LVIS laid out as their releases are (as PGSeg reads them), written on demand
by the tests and the memory benchmark: smooth pictures with one object each, label PNGs in the real encodings."""
import os.path as osp
from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.datasets import encode_rgb_label_ids, imagenet_s_wnids


def smooth_picture(h, w, seed):
    """[h, w, 3] uint8: a few colour blobs, cheap to write even at several thousand pixels a side."""
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (4, 6, 3), dtype=np.uint8))
    return np.asarray(small.resize((w, h), Image.BILINEAR))


def object_labels(h, w, class_id, ignore, seed):
    """[h, w] int32: 0 (other / background), an ellipse of `class_id`, a 2-pixel ring of `ignore` around it and a
    small rectangle of class 1 in the top-left corner."""
    rng = np.random.default_rng(seed)
    cy, cx = rng.uniform(0.35, 0.65) * h, rng.uniform(0.35, 0.65) * w
    ry, rx = rng.uniform(0.15, 0.3) * h, rng.uniform(0.15, 0.3) * w
    y, x = np.ogrid[:h, :w]
    radius = ((y - cy) / ry)**2 + ((x - cx) / rx)**2
    labels = np.zeros((h, w), np.int32)
    labels[radius <= 1.0] = class_id
    ring = 2.0 / min(ry, rx)
    labels[(radius > 1.0) & (radius <= (1.0 + ring)**2)] = ignore
    labels[:max(1, h // 8), :max(1, w // 8)] = 1
    return labels


def write_imagenet_s(root, version, samples):
    """samples: [(class id, h, w)] -> the ``ImageNetS<version>`` folder under `root` with, per sample,
    ``validation/<wnid>/ILSVRC2012_val_<n>.JPEG`` and ``validation-segmentation/<wnid>/ILSVRC2012_val_<n>.png``
    (RGB, id = R + 256 * G, 1000 ignored); the object is the sample's class, named by the version's wnid."""
    data_root = Path(root) / f'ImageNetS{version}'
    wnids = imagenet_s_wnids(version)
    for n, (class_id, h, w) in enumerate(samples, 1):
        stem = osp.join(wnids[class_id - 1], f'ILSVRC2012_val_{n:08d}')
        image, mask = data_root / 'validation' / f'{stem}.JPEG', data_root / 'validation-segmentation' / f'{stem}.png'
        image.parent.mkdir(parents=True, exist_ok=True)
        mask.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_picture(h, w, n)).save(image, quality=90)
        Image.fromarray(encode_rgb_label_ids(object_labels(h, w, class_id, 1000, n))).save(mask)
    return data_root


def write_lvis(root, samples):
    """samples: [(class id, h, w)] -> `root` with ``images/<n>.jpg``, ``annotations/<n>.png`` (16-bit, value =
    class id, 65535 ignored) and ``split/val_lvis.txt`` listing them."""
    root = Path(root)
    names = []
    for n, (class_id, h, w) in enumerate(samples, 1):
        name = f'{n:012d}'
        (root / 'images').mkdir(parents=True, exist_ok=True)
        (root / 'annotations').mkdir(parents=True, exist_ok=True)
        Image.fromarray(smooth_picture(h, w, n)).save(root / 'images' / f'{name}.jpg', quality=90)
        labels = object_labels(h, w, class_id, 65535, n).astype(np.uint16)
        Image.fromarray(labels).save(root / 'annotations' / f'{name}.png')
        names.append(name)
    (root / 'split').mkdir(parents=True, exist_ok=True)
    (root / 'split' / 'val_lvis.txt').write_text(''.join(f'{n}\n' for n in names))
    return root
