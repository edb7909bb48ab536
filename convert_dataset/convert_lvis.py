"""LVIS instance annotations (json) -> the semantic label PNGs that PGSeg's LVIS config reads.

Input  an LVIS v1 annotation file (``lvis_v1_val.json``) and the COCO images it refers to
       (``--image-root``: ``<image-root>/<split>/<name>.jpg`` as in the image's ``coco_url``, or
       ``<image-root>/<name>.jpg``).
Output the layout of ``segmentation/configs/_base_/datasets/pgseg_lvis.py`` under ``<out-dir>``:
       ``annotations/<name>.png``  16-bit single-channel maps, 0 = background, k = the k-th of the 1203 names in
                                   ``segmentation/datasets/class_lists/lvis.json`` (PGSeg's list),
       ``images/<name>.jpg``       symbolic links to the COCO images (unless ``--no-link``),
       ``split/val_lvis.txt``      one ``<name>`` a line, sorted.

Categories are matched by name, so a file whose category ids are numbered differently still gets the right
labels; a name that is not in the list stops the conversion. LVIS v1 spells one name differently from PGSeg's
list (``speaker_(stero_equipment)``, category 655; PGSeg prompts ``speaker_(stereo_equipment)``): ``ALIASES``
maps it. Polygons are filled by the pixel-centre rule (a
pixel belongs to a polygon when its centre lies inside it); uncompressed RLE masks are decoded as well,
compressed (string) RLE is refused. Where instances overlap, the smaller one is drawn last and keeps its
pixels. Pixels of no instance are background, also in an image whose ``not_exhaustive_category_ids`` says that
some instances of a category were left unlabelled, and no ignore value is written (PGSeg does not publish how it
made its maps: these rules are this project's).
"""
import argparse
import json
import os
import os.path as osp
import sys
from urllib.parse import urlparse

import numpy as np
from PIL import Image
from skimage.draw import polygon as fill_polygon
from tqdm import tqdm

CLASS_LIST = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'segmentation', 'datasets', 'class_lists',
                      'lvis.json')
SPLIT_FILE = osp.join('split', 'val_lvis.txt')
# LVIS v1's spelling -> PGSeg's (the only difference between LVIS v1's 1203 names, in id order, and PGSeg's list)
ALIASES = {'speaker_(stero_equipment)': 'speaker_(stereo_equipment)'}


class LVISFormatError(ValueError):
    """An annotation file that cannot be converted; the message names the entry."""


def lvis_names(path=CLASS_LIST):
    """-> PGSeg's 1203 LVIS names; label id k (1-based) is the k-th."""
    with open(path) as f:
        return json.load(f)['pgseg_names']


def category_labels(categories, names):
    """LVIS ``categories`` entries -> {category id: label id} by name; LVISFormatError for an unknown name."""
    position = {name: k for k, name in enumerate(names, start=1)}
    labels = {}
    for cat in categories:
        name = ALIASES.get(cat['name'], cat['name'])
        if name not in position:
            raise LVISFormatError(f'category {cat["id"]} {cat["name"]!r} is not one of the {len(names)} LVIS names '
                                  f'in {CLASS_LIST}')
        labels[cat['id']] = position[name]
    return labels


def image_relpath(image):
    """-> ``<split>/<name>.jpg`` of an LVIS image entry (from ``coco_url``; v0.5 entries have ``file_name``)."""
    if image.get('coco_url'):
        parts = urlparse(image['coco_url']).path.strip('/').split('/')
        return '/'.join(parts[-2:])
    if image.get('file_name'):
        return image['file_name']
    raise LVISFormatError(f'image {image.get("id")} has neither coco_url nor file_name')


def instance_mask(segmentation, height, width, ann_id):
    """One annotation's ``segmentation`` -> [height, width] bool mask."""
    mask = np.zeros((height, width), bool)
    if isinstance(segmentation, list):
        for poly in segmentation:
            xy = np.asarray(poly, np.float64).reshape(-1, 2)
            if len(xy) < 3:
                continue
            # pixel (row r, col c) covers [c, c+1) x [r, r+1); its centre is inside iff (r, c) is inside the
            # polygon shifted by half a pixel
            rows, cols = fill_polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape=(height, width))
            mask[rows, cols] = True
        return mask
    if isinstance(segmentation, dict) and isinstance(segmentation.get('counts'), list):
        h, w = segmentation['size']
        if (h, w) != (height, width):
            raise LVISFormatError(f'annotation {ann_id}: RLE size {h}x{w}, image {height}x{width}')
        flat = np.zeros(h * w, bool)
        start = 0
        for k, run in enumerate(segmentation['counts']):
            if k % 2:
                flat[start:start + run] = True
            start += run
        if start != h * w:
            raise LVISFormatError(f'annotation {ann_id}: RLE counts sum to {start}, not {h * w}')
        return flat.reshape(w, h).T  # RLE runs go down the columns
    raise LVISFormatError(f'annotation {ann_id}: segmentation is neither polygons nor uncompressed RLE '
                          '(compressed RLE strings are not supported)')


def semantic_map(image, annotations, labels):
    """-> [height, width] uint16 label ids of one image from its annotations (smaller instances on top)."""
    height, width = image['height'], image['width']
    masks = []
    for ann in annotations:
        if ann['category_id'] not in labels:
            raise LVISFormatError(f'annotation {ann["id"]}: category {ann["category_id"]} is not in the file\'s '
                                  'categories')
        mask = instance_mask(ann['segmentation'], height, width, ann['id'])
        masks.append((-int(mask.sum()), ann['id'], labels[ann['category_id']], mask))
    out = np.zeros((height, width), np.uint16)
    for _, _, label, mask in sorted(masks, key=lambda m: m[:2]):
        out[mask] = label
    return out


def find_image(image_root, relpath):
    for candidate in (osp.join(image_root, relpath), osp.join(image_root, osp.basename(relpath))):
        if osp.isfile(candidate):
            return osp.abspath(candidate)
    return None


def convert(ann_file, out_dir, image_root=None, link=True, names=None, max_names=20):
    """Write the maps, links and split list; returns the number of problems (images not found)."""
    with open(ann_file) as f:
        data = json.load(f)
    labels = category_labels(data['categories'], names or lvis_names())
    per_image = {}
    for ann in data['annotations']:
        per_image.setdefault(ann['image_id'], []).append(ann)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    if link:
        os.makedirs(osp.join(out_dir, 'images'), exist_ok=True)
    stems, missing = [], []
    for image in tqdm(data['images'], desc='lvis'):
        relpath = image_relpath(image)
        stem = osp.splitext(osp.basename(relpath))[0]
        label = semantic_map(image, per_image.get(image['id'], []), labels)
        Image.fromarray(label).save(osp.join(out_dir, 'annotations', f'{stem}.png'))
        stems.append(stem)
        if link:
            source = find_image(image_root, relpath) if image_root else None
            target = osp.join(out_dir, 'images', f'{stem}.jpg')
            if source is None:
                missing.append(relpath)
            elif not osp.lexists(target):
                os.symlink(source, target)
    os.makedirs(osp.join(out_dir, 'split'), exist_ok=True)
    with open(osp.join(out_dir, SPLIT_FILE), 'w') as f:
        f.writelines(f'{stem}\n' for stem in sorted(stems))
    for relpath in missing[:max_names]:
        print(f'ERROR image {relpath} not found under {image_root}')
    if len(missing) > max_names:
        print(f'... and {len(missing) - max_names} more images not found')
    print(f'wrote {len(stems)} maps to {osp.join(out_dir, "annotations")} and {osp.join(out_dir, SPLIT_FILE)}'
          f' ({sum(len(v) for v in per_image.values())} instances, {len(labels)} categories)')
    return len(missing)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('ann_file', help='LVIS annotation json, e.g. lvis_v1_val.json')
    parser.add_argument('-o', '--out-dir', default='local_data/lvis', help='output root (default: local_data/lvis)')
    parser.add_argument('--image-root', help='folder holding the COCO images as <split>/<name>.jpg or <name>.jpg '
                        '(e.g. local_data/coco/images); needed unless --no-link')
    parser.add_argument('--no-link', action='store_true', help='write the maps and the list only, no images/ links')
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.no_link and not args.image_root:
        raise SystemExit('error: --image-root is needed to link the images (or pass --no-link)')
    try:
        problems = convert(args.ann_file, args.out_dir, args.image_root, link=not args.no_link)
    except LVISFormatError as e:
        raise SystemExit(f'error: {args.ann_file}: {e}') from None
    return 1 if problems else 0


if __name__ == '__main__':
    sys.exit(main())
