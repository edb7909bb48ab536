"""Overlay pictures: input | prediction | ground truth."""
import os
import os.path as osp

import numpy as np
from PIL import Image


def colorize_over(image, labels, palette, skip=(), alpha=0.5):
    """image: [H, W, 3] uint8; labels: [H, W] int -> [H, W, 3] uint8 with class colours blended in
    (labels in `skip` and labels without a colour, e.g. 255 ignore, stay as they are)."""
    palette = np.asarray(palette, dtype=np.float32)
    out = image.astype(np.float32)
    valid = (labels >= 0) & (labels < len(palette)) & ~np.isin(labels, list(skip))
    out[valid] = (1 - alpha) * out[valid] + alpha * palette[labels[valid]]
    return out.round().astype(np.uint8)


def display_size(h, w, min_side=256, max_side=2048):
    """Panel size for viewing: small images enlarged (short side >= min_side), huge ones reduced."""
    scale = max(1, -(-min_side // min(h, w)))
    scale = min(scale, max_side / max(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def save_overlay(path, image_path, pred, gt, palette, with_bg):
    """Write [input | prediction | ground truth] for one image; pred, gt: [H, W] at the original size."""
    image = np.asarray(Image.open(image_path).convert('RGB'))
    skip = (0, ) if with_bg else ()
    panels = [image, colorize_over(image, pred, palette, skip)]
    if gt is not None:
        panels.append(colorize_over(image, gt, palette, skip))
    h, w = display_size(*image.shape[:2])
    resample = Image.NEAREST if h >= image.shape[0] else Image.BILINEAR
    panels = [np.asarray(Image.fromarray(p).resize((w, h), resample)) for p in panels]
    os.makedirs(osp.dirname(path) or '.', exist_ok=True)
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return path
