"""Class names and prompt templates for zero-shot classification.

The 1000 ImageNet class names and the 80 prompt templates are CLIP's public lists (OpenAI, MIT licence); they are
read from ``open_clip_torch``, which ships them. ``subset`` is CLIP's 7-template ensemble, ``simple`` a single
prompt, ``identity`` the bare class name. A toy world names its classes in ``classes.json`` instead.
"""
import json
import os.path as osp
from typing import Dict, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

SUBSET_TEMPLATES = (
    'itap of a {}.', 'a bad photo of a {}.', 'a origami {}.', 'a photo of the large {}.', 'a {} in a video game.',
    'art of the {}.', 'a photo of the small {}.')
SIMPLE_TEMPLATES = ('a photo of a {}.',)
IDENTITY_TEMPLATES = ('{}',)


class ClassListError(ValueError):
    """A class-name file is missing or malformed."""


def imagenet_classes() -> List[str]:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


def full_templates() -> List[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [make('{}') for make in OPENAI_IMAGENET_TEMPLATES]


def template_sets() -> Dict[str, List[str]]:
    return {'full': full_templates(), 'subset': list(SUBSET_TEMPLATES), 'simple': list(SIMPLE_TEMPLATES),
            'identity': list(IDENTITY_TEMPLATES)}


def get_templates(name: str) -> List[str]:
    sets = template_sets()
    if name not in sets:
        raise KeyError(f'unknown template set {name!r}; choose one of {sorted(sets)}')
    return sets[name]


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


def build_class_tokens(classnames: Sequence[str], templates: Sequence[str], tokenize,
                       context_length: int = 77) -> torch.Tensor:
    """Every class written in every template -> tokens [N, T, context_length]."""
    texts = [t.format(name) for name in classnames for t in templates]
    return tokenize(texts, context_length=context_length).view(len(classnames), len(templates), -1)
