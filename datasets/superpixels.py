"""Superpixel labels per patch for SegCLIP's KL loss, computed on the fly (what SegCLIP precomputed into lmdb files).

As published: the image is first brought to SegCLIP's stored form (short side resized to 224 with LANCZOS when both
sides exceed it; the published preprocessing also re-encoded it as JPEG, which this does not), `skimage.segmentation.
felzenszwalb(image, scale=224, sigma=0.9, min_size=224)` labels its pixels, and the random crop of the stored image
(normalised corners x0, y0, x1, y1, as float32) cuts the label map: columns int(x0 * W) .. ceil(x1 * W), rows
likewise (the whole map when the cut is under 2 pixels), nearest-resized to the crop size, averaged over each
patch and truncated to an integer. Running felzenszwalb on the crop instead is not the same (measured on
scikit-image's sample photos: 12% of the patch pairs on average change whether they share a superpixel).
"""
import math
import random
from typing import Dict, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import functional as TF

STORED_SIZE = 224
FELZENSZWALB = dict(scale=224, sigma=0.9, min_size=224)


def stored_image(image: Image.Image, size: int = STORED_SIZE) -> Image.Image:
    """SegCLIP's stored copy: when both sides exceed `size`, the short side becomes `size` and the long side
    int(size * aspect ratio), LANCZOS; otherwise the image as it is."""
    w, h = image.size
    if w > size and h > size:
        ratio = float(w) / float(h)
        w, h = (int(size * ratio), size) if ratio >= 1. else (size, int(size / ratio))
        image = image.resize((w, h), Image.LANCZOS)
    return image


def superpixel_map(image: np.ndarray, scale: float = FELZENSZWALB['scale'], sigma: float = FELZENSZWALB['sigma'],
                   min_size: int = FELZENSZWALB['min_size']) -> np.ndarray:
    """image: [H, W, 3] uint8 RGB -> [H, W] int superpixel ids (felzenszwalb)."""
    from skimage.segmentation import felzenszwalb
    return felzenszwalb(image, scale=scale, sigma=sigma, min_size=min_size)


def crop_patch_labels(label_map: np.ndarray, coord: Sequence[float], size: int = 224,
                      patch_size: int = 16) -> np.ndarray:
    """label_map: [H, W] ids of the stored image; coord: the crop's normalised (x0, y0, x1, y1) (x0 > x1 / y0 > y1
    for a flipped crop) -> [size / patch_size, size / patch_size] int64, as the official get_felzenszwalb_from_cache.
    """
    if size % patch_size:
        raise ValueError(f'crop size {size} is not a multiple of the patch size {patch_size}')
    h_map, w_map = label_map.shape
    x0, y0, x1, y1 = (float(c) for c in np.asarray(coord, dtype=np.float64).reshape(4))
    flip_h, flip_v = x0 > x1, y0 > y1
    x0, x1 = min(x0, x1), max(x0, x1)
    y0, y1 = min(y0, y1), max(y0, y1)
    left, right = int(x0 * w_map), math.ceil(x1 * w_map)
    top, bottom = int(y0 * h_map), math.ceil(y1 * h_map)
    cut = label_map if bottom - top < 2 or right - left < 2 else label_map[top:bottom, left:right]
    if flip_h:
        cut = np.flip(cut, axis=1)
    if flip_v:
        cut = np.flip(cut, axis=0)
    cut = torch.from_numpy(np.ascontiguousarray(cut)).to(torch.float)[None, None]
    resized = F.interpolate(cut, size=size, mode='nearest')[0, 0].to(torch.long).numpy()
    grid = size // patch_size
    patches = resized.reshape(grid, patch_size, grid, patch_size).transpose(0, 2, 1, 3).reshape(grid, grid, -1)
    return np.mean(patches, axis=-1).astype(np.int64)


def superpixel_patch_labels(image: np.ndarray, coord: Sequence[float], size: int = 224, patch_size: int = 16,
                            stored_size: int = STORED_SIZE, **felzenszwalb_args) -> np.ndarray:
    """image: [H, W, 3] uint8 RGB as read; coord: normalised (x0, y0, x1, y1) of a crop of its stored copy
    -> [size / patch_size, size / patch_size] int64 superpixel id of every patch of the crop."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f'superpixel_patch_labels needs an [H, W, 3] uint8 RGB image, got {image.dtype} '
                         f'{tuple(image.shape)}')
    stored = np.asarray(stored_image(Image.fromarray(image), stored_size))
    return crop_patch_labels(superpixel_map(stored, **{**FELZENSZWALB, **felzenszwalb_args}), coord, size,
                             patch_size)


def crop_coordinates(i: int, j: int, h: int, w: int, height: int, width: int) -> torch.Tensor:
    """A crop (top i, left j, h x w) of a height x width image -> float32 normalised (x0, y0, x1, y1) of its first
    and last pixel, as the official RandomResizedCropCoord (zeros for a one-pixel-wide image)."""
    if width - 1 == 0 or height - 1 == 0:
        return torch.zeros(4)
    return torch.tensor([float(j) / (width - 1), float(i) / (height - 1), float(j + w - 1) / (width - 1),
                         float(i + h - 1) / (height - 1)])


class SuperpixelCrop:
    """Training view with superpixel labels (`data.img_aug.superpixels.enabled`): RGB PIL image -> {'image':
    [3, size, size] normalised, 'seg_labels': [size / patch, size / patch] int64}.

    The stored copy of the image is cropped (RandomResizedCrop's distribution, aspect ratio 3/4..4/3), resized with
    `interpolation`, optionally flipped (the crop's corners swap, and the labels flip with it); the labels come from
    felzenszwalb on the whole stored copy (crop_patch_labels)."""

    def __init__(self, size: int, scale: Sequence[float], mean: Sequence[float], std: Sequence[float],
                 interpolation: str = 'bicubic', hflip: bool = False, patch_size: int = 16,
                 stored_size: int = STORED_SIZE, felzenszwalb_args: Dict = None):
        self.size = size
        self.scale = tuple(scale)
        self.ratio = (3. / 4., 4. / 3.)
        self.interpolation = T.InterpolationMode(interpolation)
        self.hflip = hflip
        self.patch_size = patch_size
        self.stored_size = stored_size
        self.felzenszwalb_args = {**FELZENSZWALB, **(felzenszwalb_args or {})}
        self.normalise = T.Compose([T.ToTensor(), T.Normalize(mean=mean, std=std)])
        if size % patch_size:
            raise ValueError(f'data.img_aug.img_size {size} is not a multiple of superpixels.patch_size {patch_size}')

    def __call__(self, image: Image.Image) -> Dict[str, torch.Tensor]:
        stored = stored_image(image.convert('RGB'), self.stored_size)
        labels = superpixel_map(np.asarray(stored), **self.felzenszwalb_args)
        i, j, h, w = T.RandomResizedCrop.get_params(stored, self.scale, self.ratio)
        coord = crop_coordinates(i, j, h, w, stored.height, stored.width)
        crop = TF.resized_crop(stored, i, j, h, w, [self.size, self.size], self.interpolation)
        if self.hflip and random.random() < 0.5:
            crop = TF.hflip(crop)
            coord = coord[[2, 1, 0, 3]]
        seg_labels = crop_patch_labels(labels, coord.numpy(), self.size, self.patch_size)
        return {'image': self.normalise(crop), 'seg_labels': torch.from_numpy(seg_labels)}
