"""Image transforms: the two training augmentations of GroupViT/PGSeg and the zero-shot validation transform.

``img_aug.deit_aug: false``  RandomResizedCrop(img_size, scale=img_scale) + horizontal flip + ImageNet normalisation.
``img_aug.deit_aug: true``   timm ``create_transform`` (RandAugment ``auto_augment``, colour jitter, random erasing).
Validation resizes the short side to ``img_size + 32`` (plain) or ``img_size * 256 / 224`` (DeiT), or to
``img_size / img_aug.val_crop_pct`` when that is set (1.0: the whole image), and centre-crops.
"""
from typing import Callable

from omegaconf import DictConfig
from timm.data import create_transform
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.data.transforms import str_to_interp_mode
from torchvision import transforms as T


def _normalise() -> list:
    return [T.ToTensor(), T.Normalize(mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD)]


def build_train_transform(img_aug: DictConfig) -> Callable:
    """RGB PIL image -> normalised tensor [3, img_size, img_size]."""
    if not img_aug.deit_aug:
        return T.Compose([T.RandomResizedCrop(img_aug.img_size, scale=tuple(img_aug.img_scale)),
                          T.RandomHorizontalFlip(), *_normalise()])
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
    return T.Compose([resize, T.CenterCrop(size), *_normalise()])


def build_img_transform(is_train: bool, img_aug: DictConfig) -> Callable:
    return build_train_transform(img_aug) if is_train else build_val_transform(img_aug)
