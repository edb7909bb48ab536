"""Class names for zero-shot classification.

The 1000 ImageNet class names are CLIP's public list (OpenAI, MIT licence), read from ``open_clip_torch``, which
ships it. A toy world names its classes in ``classes.json`` instead. The prompt templates are in templates.py.
"""
import json
import os.path as osp
from typing import List

from omegaconf import DictConfig, OmegaConf


class ClassListError(ValueError):
    """A class-name file is missing or malformed."""


def imagenet_classes() -> List[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


def read_classes_file(path: str) -> List[str]:
    """Class names from a JSON file holding ``{"classes": [...]}`` or a plain list."""
    if not osp.isfile(path):
        raise ClassListError(f'class-name file not found: {path}')
    try:
        with open(path) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ClassListError(f'class-name file {path} is not valid JSON: {e}') from None
    names = data.get('classes') if isinstance(data, dict) else data
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ClassListError(f'class-name file {path} must hold a non-empty list of strings under "classes"')
    return names


def val_class_names(data_cfg: DictConfig) -> List[str]:
    """Class names of the zero-shot classification set: ``meta.<val>.classes_file`` if set, else ImageNet's 1000."""
    val_name = list(data_cfg.dataset.val)[0]
    classes_file = OmegaConf.select(data_cfg, f'dataset.meta.{val_name}.classes_file', default=None)
    return read_classes_file(classes_file) if classes_file else imagenet_classes()

