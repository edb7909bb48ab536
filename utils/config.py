"""YAML configs (OmegaConf) with `_base_` inheritance and a strict key check.

Every key a config file (or `--opts`) sets must exist in ``configs/default.yml``; keys under ``model`` must be
constructor arguments of the registered model class named by the section's ``type``. Anything else raises
ONE ``ConfigError`` naming the key and the file, with the closest valid key as a suggestion.
"""
import difflib
import inspect
import logging
import os
import os.path as osp
from functools import lru_cache
from typing import List, Optional, Sequence, Set

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs')
SCHEMA_FILES = ('default.yml', 'default_pgseg.yml')
# sections whose children are user-chosen names (dataset names); each child follows the union of the defaults' children
OPEN_SECTIONS = ('data.dataset.meta', )
# keys whose value names prompt-template sets (datasets/templates.py)
TEMPLATE_KEYS = ('data.text_aug.template_set', 'evaluate.cls.template', 'evaluate.cls.extra_templates',
                 'evaluate.seg.template')


# keys that earlier versions wrote into saved configs; they were never read by the training
RETIRED_KEYS = ('local_rank', 'vis', 'checkpoint.freq')


class ConfigError(ValueError):
    """A config file or override is unreadable or names a key that does not exist."""


def _read_yaml(path: str) -> DictConfig:
    if not osp.isfile(path):
        raise ConfigError(f'config file not found: {path}')
    try:
        cfg = OmegaConf.load(path)
    except (OmegaConfBaseException, yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(f'cannot parse {path}: {type(e).__name__}: {str(e).splitlines()[0]}') from None
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f'{path}: top level must be a mapping, got a list')
    return cfg


def _drop_retired_keys(raw: DictConfig, path: str) -> None:
    """Configs saved by earlier versions (a run's config.yaml) still name keys that no longer exist: drop them."""
    for key in RETIRED_KEYS:
        parent, _, leaf = key.rpartition('.')
        node = OmegaConf.select(raw, parent, default=None) if parent else raw
        if isinstance(node, DictConfig) and leaf in node:
            node.pop(leaf)
            logging.getLogger(__name__).warning("%s: ignoring '%s', a key this version no longer has", path, key)


def _collect_files(path: str, stack: Sequence[str] = ()) -> List[tuple]:
    """-> [(path, raw DictConfig without `_base_`)] in merge order: bases first (recursively), the file last."""
    if osp.abspath(path) in stack:
        raise ConfigError(f'{path}: circular _base_ chain')
    raw = _read_yaml(path)
    _drop_retired_keys(raw, path)
    bases = raw.pop('_base_', None)
    if bases is None:
        bases = []
    elif isinstance(bases, str):
        bases = [bases]
    elif not isinstance(bases, ListConfig) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f'{path}: _base_ must be a file name or a list of file names')
    files = []
    for base in bases:
        files.extend(_collect_files(osp.normpath(osp.join(osp.dirname(path), base)), (*stack, osp.abspath(path))))
    files.append((path, raw))
    return files


@lru_cache()
def _schema() -> dict:
    """Nested dict of every known non-model key, built from the default config files."""
    merged = OmegaConf.merge(*(raw for name in SCHEMA_FILES for _, raw in _collect_files(osp.join(CONFIG_DIR, name))))
    return OmegaConf.to_container(merged, resolve=False)


def _suggest(key: str, choices: Set[str]) -> str:
    close = difflib.get_close_matches(key, sorted(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ''


def _unknown(path: str, key: str, allowed: Set[str], source: str) -> ConfigError:
    return ConfigError(f"unknown key '{path}' in {source}{_suggest(key, allowed)}")


def _model_registry():
    from models.builder import MODELS  # imported when first needed: models import utils
    return MODELS


def model_types() -> Set[str]:
    return set(_model_registry().keys())


def model_keys(type_name: str, source: str) -> Set[str]:
    """Constructor arguments (+ 'type') of the registered model class."""
    if type_name not in model_types():
        raise ConfigError(f"unknown model type '{type_name}' in {source}{_suggest(type_name, model_types())}")
    return init_arguments(_model_registry()[type_name]) | {'type'}


def init_arguments(cls: type) -> Set[str]:
    """Named __init__ arguments of `cls`, following **kwargs up the class hierarchy (stops at torch/builtins)."""
    names = set()
    for klass in cls.__mro__:
        if '__init__' not in vars(klass) or klass.__module__.split('.')[0] in ('torch', 'builtins'):
            continue
        params = inspect.signature(klass.__init__).parameters.values()
        names.update(p.name for p in params if p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return names


def _check_model(node: dict, merged, path: str, source: str) -> None:
    """node: keys set by one file under `path`; merged: the final merged section (gives its `type`)."""
    type_name = merged.get('type') if isinstance(merged, dict) else None
    if type_name is None:
        raise ConfigError(f"'{path}' has no 'type' in {source} or its bases")
    if node.get('type') != type_name and type_name not in model_types():
        return  # the file that sets the unknown type reports it
    allowed = model_keys(type_name, source)
    for key, value in node.items():
        if key not in allowed:
            raise _unknown(f'{path}.{key}', key, allowed, source)
        sub = merged.get(key)
        if isinstance(value, dict) and isinstance(sub, dict) and 'type' in sub:
            _check_model(value, sub, f'{path}.{key}', source)


def _check_section(node: dict, schema: dict, merged: dict, prefix: str, source: str) -> None:
    for key, value in node.items():
        path = f'{prefix}{key}'
        if path == 'model':
            if value is not None:
                _check_model(value, merged.get('model'), 'model', source)
            continue
        if prefix.rstrip('.') in OPEN_SECTIONS:
            entry_schema = {k: None for entry in schema.values() if isinstance(entry, dict) for k in entry}
            _check_value(value, entry_schema, path, source)
            if isinstance(value, dict):
                _check_section(value, entry_schema, {}, f'{path}.', source)
            continue
        if key not in schema:
            raise _unknown(path, key, set(schema), source)
        _check_value(value, schema[key], path, source)
        if isinstance(value, dict) and isinstance(schema[key], dict):
            sub = merged.get(key) if isinstance(merged, dict) else None
            _check_section(value, schema[key], sub if isinstance(sub, dict) else {}, f'{path}.', source)


def _check_value(value, expected, path: str, source: str) -> None:
    if isinstance(expected, dict) and not isinstance(value, dict) and value is not None:
        raise ConfigError(f"'{path}' in {source} must be a mapping, got {value!r}")
    if expected is not None and not isinstance(expected, dict) and isinstance(value, dict):
        raise ConfigError(f"'{path}' in {source} is a single value in configs/default.yml, got a mapping")


def _check_template_sets(node: dict, source: str) -> None:
    """Every template-set name that `node` sets (not interpolated) is one of datasets/templates.py's sets."""
    from datasets.templates import template_set_problem
    for key in TEMPLATE_KEYS:
        value = node
        for part in key.split('.'):
            value = value.get(part) if isinstance(value, dict) else None
        for name in value if isinstance(value, list) else [value]:
            if name is None or (isinstance(name, str) and name.startswith('${')):
                continue
            problem = template_set_problem(name, f"'{key}' in {source}")
            if problem:
                raise ConfigError(problem)


def validate(node: DictConfig, merged: DictConfig, source: str) -> None:
    """Raise ConfigError for the first key of `node` (one file or the --opts) that the schema does not know, or
    for a template-set name that does not exist."""
    plain = OmegaConf.to_container(node, resolve=False)
    _check_section(plain, _schema(), OmegaConf.to_container(merged, resolve=False), '', source)
    _check_template_sets(plain, source)


def _check_resolves(cfg: DictConfig, source: str) -> None:
    try:
        OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:
        raise ConfigError(f'{source}: {str(e).splitlines()[0]}') from None


def load_config(path: str) -> DictConfig:
    """Load `path` with its `_base_` files merged (later files override earlier ones) and every key checked."""
    files = _collect_files(str(path))
    cfg = OmegaConf.merge(*(raw for _, raw in files))
    for file_path, raw in files:
        validate(raw, cfg, file_path)
    _check_resolves(cfg, str(path))
    return cfg


def parse_opts(opts: Optional[Sequence[str]], source: str = '--opts') -> DictConfig:
    """['a.b=1', 'c.d', 'x y'] -> {a: {b: 1}, c: {d: 'x y'}}: 'key=value' items or 'key' 'value' pairs, values
    parsed as YAML. `source` names the option in errors."""
    dotlist, items, i = [], [str(o) for o in opts or []], 0
    while i < len(items):
        item = items[i]
        if '=' in item:
            dotlist.append(item)
            i += 1
            continue
        if i + 1 >= len(items):
            raise ConfigError(f"{source}: key '{item}' has no value (use key=value or 'key value')")
        dotlist.append(f'{item}={items[i + 1]}')
        i += 2
    try:
        return OmegaConf.from_dotlist(dotlist)
    except OmegaConfBaseException as e:
        raise ConfigError(f'{source}: {str(e).splitlines()[0]}') from None


def apply_opts(cfg: DictConfig, opts: Optional[Sequence[str]]) -> DictConfig:
    """`cfg` with the --opts overrides merged in, every overridden key checked like a config file's."""
    overrides = parse_opts(opts)
    if not len(overrides):
        return cfg
    merged = OmegaConf.merge(cfg, overrides)
    validate(overrides, merged, '--opts')
    return merged


def _arg(args, name: str):
    return getattr(args, name, None)


def get_config(args) -> DictConfig:
    """Config for a run: args.cfg + args.opts + command-line overrides; output = output/model_name/tag.

    args may carry: cfg, opts, batch_size, output, tag, resume, amp_opt_level, wandb, keep, eval.
    model_name becomes '<name or config stem>_bs<batch>x<WORLD_SIZE>'.
    The result is struct-locked (no new keys) but writable.
    """
    cfg = apply_opts(load_config(args.cfg), _arg(args, 'opts'))
    overrides = {
        'batch_size': 'data.batch_size', 'amp_opt_level': 'train.amp_opt_level', 'resume': 'checkpoint.resume',
        'eval': 'evaluate.eval_only', 'keep': 'checkpoint.max_kept', 'wandb': 'wandb', 'tag': 'tag',
    }
    for arg_name, key in overrides.items():
        if _arg(args, arg_name):
            OmegaConf.update(cfg, key, _arg(args, arg_name), merge=False)

    world_size = int(os.environ.get('WORLD_SIZE', 1))
    stem = osp.splitext(osp.basename(args.cfg))[0]
    cfg.model_name = f'{cfg.model_name or stem}_bs{cfg.data.batch_size}x{world_size}'
    root = _arg(args, 'output')
    if not root:
        root = 'output' if OmegaConf.is_missing(cfg, 'output') or not cfg.output else cfg.output
    cfg.output = osp.join(root, cfg.model_name, str(cfg.tag))
    _check_resolves(cfg, str(args.cfg))
    OmegaConf.set_struct(cfg, True)
    return cfg
