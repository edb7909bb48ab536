"""The prompt-template sets: every set a config, a benchmark preset or the caption transform may name.

``full`` is CLIP's 80 ImageNet templates (OpenAI, MIT licence; read from ``open_clip_torch``, which ships them),
``subset`` CLIP's 7-template ensemble, ``simple`` a single prompt, ``identity`` the bare class name, ``custom`` TCL's
set (kakaobrain/tcl ``datasets/templates.py``: ``subset`` followed by two plural-friendly prompts).
"""
from typing import Callable, Dict, List, Optional

from utils.config import ConfigError

SUBSET_TEMPLATES = (
    'itap of a {}.', 'a bad photo of a {}.', 'a origami {}.', 'a photo of the large {}.', 'a {} in a video game.',
    'art of the {}.', 'a photo of the small {}.')
SIMPLE_TEMPLATES = ('a photo of a {}.',)
IDENTITY_TEMPLATES = ('{}',)
TCL_EXTRA_TEMPLATES = ('a photo of many {}.', 'a photo of {}s.')


def full_templates() -> List[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [make('{}') for make in OPENAI_IMAGENET_TEMPLATES]


TEMPLATE_SETS: Dict[str, Callable[[], List[str]]] = {
    'custom': lambda: [*SUBSET_TEMPLATES, *TCL_EXTRA_TEMPLATES],
    'full': full_templates,
    'identity': lambda: list(IDENTITY_TEMPLATES),
    'simple': lambda: list(SIMPLE_TEMPLATES),
    'subset': lambda: list(SUBSET_TEMPLATES),
}


def template_set_problem(name, where: str) -> Optional[str]:
    """None when `name` is a template set, else the one-line error naming `where` (the key that gave it)."""
    if isinstance(name, str) and name in TEMPLATE_SETS:
        return None
    return f"{where}: unknown template set {name!r}; choose one of {', '.join(TEMPLATE_SETS)}"


def get_templates(name: str, where: str = 'template set') -> List[str]:
    """name: a key of TEMPLATE_SETS -> its templates, each with one '{}' for the class name."""
    problem = template_set_problem(name, where)
    if problem:
        raise ConfigError(problem)
    return TEMPLATE_SETS[name]()
