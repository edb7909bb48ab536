"""Image transforms: the two training augmentations of GroupViT/PGSeg and the zero-shot validation transform.

``img_aug.deit_aug: false``  RandomResizedCrop(img_size, scale=img_scale) + horizontal flip (``hflip``) + grey with
probability ``grayscale`` + normalisation (``normalize``: ImageNet's mean/std, or CLIP's); with
``superpixels.enabled`` also superpixel labels per patch.
``img_aug.deit_aug: true``   timm ``create_transform`` (RandAugment ``auto_augment``, colour jitter, random erasing).
Validation resizes the short side to ``img_size + 32`` (plain) or ``img_size * 256 / 224`` (DeiT), or to
``img_size / img_aug.val_crop_pct`` when that is set (1.0: the whole image), and centre-crops.
"""
from typing import Callable, Tuple

from omegaconf import DictConfig, OmegaConf
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T

from .superpixels import SuperpixelCrop

# data.img_aug.normalize -> (mean, std) of the RGB channels in [0, 1]
NORMALISATIONS = {'imagenet': (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
                  'clip': ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))}


def mean_std(img_aug: DictConfig) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """(mean, std) of ``img_aug.normalize``: 'imagenet' (default) or 'clip'."""
    name = OmegaConf.select(img_aug, 'normalize', default='imagenet')
    if name not in NORMALISATIONS:
        raise ValueError(f"data.img_aug.normalize must be one of {sorted(NORMALISATIONS)}, got {name!r}")
    return NORMALISATIONS[name]


def _normalise(img_aug: DictConfig) -> list:
    mean, std = mean_std(img_aug)
    return [T.ToTensor(), T.Normalize(mean=mean, std=std)]


def build_train_transform(img_aug: DictConfig) -> Callable:
    """RGB PIL image -> normalised tensor [3, img_size, img_size]; with ``img_aug.superpixels.enabled`` ->
    {'image': that tensor, 'seg_labels': [img_size / patch_size, img_size / patch_size]} (datasets/superpixels.py)."""
    superpixels = OmegaConf.select(img_aug, 'superpixels')
    if superpixels is not None and superpixels.enabled:
        if img_aug.deit_aug:
            raise ValueError('data.img_aug.superpixels needs the plain crop (data.img_aug.deit_aug: false)')
        mean, std = mean_std(img_aug)
        return SuperpixelCrop(img_aug.img_size, img_aug.img_scale, mean, std, img_aug.interpolation,
                              bool(OmegaConf.select(img_aug, 'hflip', default=True)), superpixels.patch_size,
                              superpixels.stored_size, dict(scale=superpixels.scale, sigma=superpixels.sigma,
                                                            min_size=superpixels.min_size))
    if not img_aug.deit_aug:
        flip = [T.RandomHorizontalFlip()] if OmegaConf.select(img_aug, 'hflip', default=True) else []
        grey = float(OmegaConf.select(img_aug, 'grayscale', default=0.0))
        if not 0 <= grey <= 1:
            raise ValueError(f'data.img_aug.grayscale is a probability, got {grey}')
        return T.Compose([T.RandomResizedCrop(img_aug.img_size, scale=tuple(img_aug.img_scale)),
                          *flip, *([T.RandomGrayscale(grey)] if grey > 0 else []), *_normalise(img_aug)])
    return create_transform(
        input_size=img_aug.img_size,
        is_training=True,
        scale=tuple(img_aug.img_scale),
        color_jitter=img_aug.color_jitter if img_aug.color_jitter > 0 else None,
        auto_augment=img_aug.auto_augment if img_aug.auto_augment != 'none' else None,
        re_prob=img_aug.re_prob,
        re_mode=img_aug.re_mode,
        re_count=img_aug.re_count,
        interpolation=img_aug.interpolation,
        mean=mean_std(img_aug)[0],
        std=mean_std(img_aug)[1],
    )


def build_val_transform(img_aug: DictConfig) -> Callable:
    """RGB PIL image -> normalised centre crop [3, img_size, img_size]."""
    size = img_aug.img_size
    if img_aug.get('val_crop_pct') is not None:
        resize = T.Resize(int(round(size / float(img_aug.val_crop_pct))))
    elif img_aug.deit_aug:
        resize = T.Resize(int(256 / 224 * size), interpolation=str_to_interp_mode(img_aug.interpolation))
    else:
        resize = T.Resize(size + 32)
    return T.Compose([resize, T.CenterCrop(size), *_normalise(img_aug)])


def build_img_transform(is_train: bool, img_aug: DictConfig) -> Callable:
    return build_train_transform(img_aug) if is_train else build_val_transform(img_aug)
