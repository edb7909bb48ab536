"""Checkpoint files: safe reading of published `.pth` files, atomic saving, weight loading into a model.

Formats read:
- a `.pth`/`.pt` file (torch.save of a dict holding the weights under 'model', as the published GroupViT/PGSeg
  checkpoints; their training files also hold optimizer, lr_scheduler, metrics, epoch, an OmegaConf config, amp);
- a `.safetensors` file (weights only);
- this project's checkpoint directory `<name>/` holding `model.safetensors` (weights) and `state.pt`
  (training state: tensors and plain containers only, so torch's weights_only loader reads it).

Nothing is ever unpickled with an unrestricted unpickler: a file is read with `torch.load(weights_only=True)` and,
when that refuses it, with an allowlist unpickler (tensors, storages, containers, numbers, strings, OmegaConf
configs, numpy scalars/arrays). Any other global in the pickle raises CheckpointError before anything runs.
"""
import collections
import enum
import importlib
import logging
import math
import os
import os.path as osp
import pickle
import re
import shutil
import tempfile
import types
import typing
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors
from safetensors.torch import save_file as save_safetensors

logger = logging.getLogger(__name__)

WEIGHTS_FILE = 'model.safetensors'
STATE_FILE = 'state.pt'
# key prefix in a published/foreign state dict -> prefix in this project's model ('' removes it)
PUBLISHED_KEY_MAP = {'module.': ''}


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, unsafe, or does not fit the model."""


class _RefusedGlobal(pickle.UnpicklingError):

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


def _extra_allowed_globals() -> Dict[str, Any]:
    allowed = {f'builtins.{t.__name__}': t for t in (dict, list, tuple, set, frozenset, int, float, bool, str,
                                                       bytes, bytearray, complex, slice, type(None))}
    allowed.update({
        'collections.OrderedDict': collections.OrderedDict,
        'collections.defaultdict': collections.defaultdict,
        'collections.Counter': collections.Counter,
        'collections.deque': collections.deque,
        'typing.Any': typing.Any,
    })
    return allowed


_NUMPY_GLOBALS = ('numpy.dtype', 'numpy.ndarray', 'numpy.core.multiarray.scalar', 'numpy._core.multiarray.scalar',
                  'numpy.core.multiarray._reconstruct', 'numpy._core.multiarray._reconstruct')


def _allowed_global(module: str, name: str):
    """Object for a pickle global, or raise _RefusedGlobal. Names are mapped from Python 2 spellings first."""
    module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
    qualname = f'{module}.{name}'
    from torch._weights_only_unpickler import _get_allowed_globals
    for table in (_get_allowed_globals(), _extra_allowed_globals()):
        if qualname in table:
            return table[qualname]
    if qualname in _NUMPY_GLOBALS or (module == 'numpy.dtypes' and name.endswith('DType')):
        return getattr(importlib.import_module(module), name)
    if module == 'omegaconf' or module.startswith('omegaconf.'):
        obj = getattr(importlib.import_module(module), name, None)
        if isinstance(obj, type) and _is_omegaconf_data_class(obj):
            return obj
    raise _RefusedGlobal(qualname)


def _is_omegaconf_data_class(cls: type) -> bool:
    from omegaconf.base import Metadata, Node
    return cls.__module__.startswith('omegaconf') and issubclass(cls, (Node, Metadata, enum.Enum))


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that resolves globals only from an allowlist (see module docstring)."""

    def find_class(self, module, name):
        return _allowed_global(module, name)


def _restricted_load(file, **kwargs):
    return RestrictedUnpickler(file, **kwargs).load()


def _restricted_pickle_module() -> types.ModuleType:
    """A stand-in for the `pickle` module that torch.load uses for every unpickling step."""
    module = types.ModuleType('restricted_pickle')
    module.Unpickler = RestrictedUnpickler
    module.load = _restricted_load
    module.UnpicklingError = pickle.UnpicklingError
    return module


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f'{type(e).__name__}: {text[0].split(". ")[0][:200]}' if text else type(e).__name__


def _check_file(path: str) -> None:
    if not osp.exists(path):
        raise CheckpointError(f'{path}: no such file')
    if osp.isdir(path):
        raise CheckpointError(f'{path}: is a directory without {WEIGHTS_FILE} and {STATE_FILE}, not a checkpoint')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'{path}: empty file, not a checkpoint')


def _check_torch_format(path: str) -> None:
    """A torch.save file is a zip archive (torch >= 1.6) or starts with a protocol-2 pickle (legacy format)."""
    if zipfile.is_zipfile(path):
        return
    with open(path, 'rb') as f:
        head = f.read(8)
    if head.startswith(b'PK'):
        raise CheckpointError(f'{path}: truncated or corrupt zip archive (no central directory): '
                              'an interrupted save or an incomplete download')
    if not head.startswith(b'\x80\x02'):
        raise CheckpointError(f'{path}: not a PyTorch checkpoint (neither a zip archive nor a legacy torch file; '
                              f'starts with {head!r})')


def _torch_load(path: str) -> Any:
    """torch.load with weights_only=True, else with the allowlist unpickler; never an unrestricted unpickler."""
    _check_torch_format(path)
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as weights_only_error:
        first_error = weights_only_error
    try:
        return torch.load(path, map_location='cpu', weights_only=False, pickle_module=_restricted_pickle_module())
    except _RefusedGlobal as e:
        raise CheckpointError(f"{path}: refused to unpickle '{e.qualname}': only tensors, numbers, strings, "
                              'containers and OmegaConf configs are loaded (the file may be malicious)') from None
    except Exception as e:
        reason = _first_line(e if 'Weights only load failed' in str(first_error) else first_error)
        raise CheckpointError(f'{path}: not a readable PyTorch checkpoint (truncated, corrupt or another '
                              f'format): {reason}') from None


def _read_safetensors(path: str) -> Dict[str, torch.Tensor]:
    _check_file(path)
    try:
        return load_safetensors(path, device='cpu')
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f'{path}: not a readable safetensors file: {_first_line(e)}') from None


def is_checkpoint_dir(path: str) -> bool:
    return osp.isdir(path) and osp.isfile(osp.join(path, WEIGHTS_FILE)) and osp.isfile(osp.join(path, STATE_FILE))


def is_torchscript_archive(path: str) -> bool:
    """A TorchScript archive (torch.jit.save; OpenAI's CLIP files): a zip holding `<root>/constants.pkl`. torch.load
    would hand it to torch.jit.load; it is read by models.clip.openai_file instead, which runs nothing in it."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith('/constants.pkl') and name.count('/') == 1 for name in archive.namelist())


def read_checkpoint(path: str) -> Dict[str, Any]:
    """Raw content of a checkpoint (any supported format) as a dict, tensors on CPU.

    A `.safetensors` file gives {'model': tensors}; a checkpoint directory gives its state with 'model' added; a
    TorchScript archive (OpenAI's CLIP file) gives {'model': its tensors as float32, OpenAI's names}.
    """
    path = os.fspath(path)
    if is_checkpoint_dir(path):
        state = _torch_load(osp.join(path, STATE_FILE))
        if not isinstance(state, dict):
            raise CheckpointError(f'{osp.join(path, STATE_FILE)}: holds a {type(state).__name__}, expected a dict')
        return {**state, 'model': _read_safetensors(osp.join(path, WEIGHTS_FILE))}
    if path.endswith('.safetensors'):
        return {'model': _read_safetensors(path)}
    _check_file(path)
    if is_torchscript_archive(path):
        from models.clip.openai_file import read_openai_file  # models import utils: imported when first needed
        return {'model': read_openai_file(path).state_dict}
    content = _torch_load(path)
    if not isinstance(content, dict):
        raise CheckpointError(f'{path}: holds a {type(content).__name__}, expected a dict (state dict or checkpoint)')
    return content


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def extract_state_dict(content: Dict[str, Any], path: str = '<checkpoint>') -> Dict[str, torch.Tensor]:
    """The weights of a checkpoint: its 'model' or 'state_dict' entry, or the dict itself when it is one."""
    for key in ('model', 'state_dict'):
        if _is_state_dict(content.get(key)):
            return dict(content[key])
    if _is_state_dict(content):
        return dict(content)
    raise CheckpointError(f"{path}: no state dict found (no 'model' or 'state_dict' entry of tensors; "
                          f'keys: {sorted(map(str, content))[:10]})')


def load_checkpoint(path: str) -> Dict[str, Any]:
    """Any supported checkpoint -> {'model': state dict, 'optimizer', 'lr_scheduler', 'scaler', 'epoch', 'step',
    'config', 'metrics', ...}: missing entries are None, other entries of the file are kept as they are."""
    content = read_checkpoint(path)
    out = {key: None for key in ('optimizer', 'lr_scheduler', 'scaler', 'epoch', 'step', 'config', 'metrics')}
    if not _is_state_dict(content):
        out.update(content)
    out['model'] = extract_state_dict(content, os.fspath(path))
    out.pop('state_dict', None)
    if isinstance(out['config'], dict):
        from omegaconf import OmegaConf
        out['config'] = OmegaConf.create(out['config'])
    return out


def _plain(obj: Any, where: str) -> Any:
    """Tensors, numbers, strings and containers only (what torch.load(weights_only=True) reads back)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf
    if isinstance(obj, (DictConfig, ListConfig)):
        return OmegaConf.to_container(obj, resolve=False)
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, dict):
        return {k: _plain(v, f'{where}[{k!r}]') for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        items = [_plain(v, f'{where}[{i}]') for i, v in enumerate(obj)]
        return items if isinstance(obj, list) else tuple(items)
    if hasattr(obj, 'item') and getattr(obj, 'shape', None) == ():
        return obj.item()
    raise CheckpointError(f'cannot save {type(obj).__name__} at {where}: only tensors, numbers, strings, '
                          'containers and OmegaConf configs are saved')


def _weights_for_saving(model_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """CPU contiguous copies; tensors sharing memory are cloned (safetensors refuses shared storage)."""
    out, seen = {}, set()
    for name, tensor in model_state.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f'cannot save model_state[{name!r}]: {type(tensor).__name__} is not a tensor')
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen and tensor.numel() else tensor
        seen.add(ptr)
    return out


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: str, write) -> None:
    write(path)
    _fsync_path(path)


def save_checkpoint(path: str, model_state: Dict[str, torch.Tensor], optimizer_state: Optional[dict] = None,
                    scheduler_state: Optional[dict] = None, scaler_state: Optional[dict] = None,
                    extra: Optional[Dict[str, Any]] = None) -> str:
    """Write a checkpoint atomically and return its path.

    path ending in `.pth`/`.pt`: one torch.save file {'model', 'optimizer', 'lr_scheduler', 'scaler', **extra}.
    Any other path: a directory with model.safetensors + state.pt. Both are written under a hidden temporary name
    in the same folder, fsynced, then renamed into place, so a crash never leaves a partial checkpoint under the
    final name. extra holds e.g. epoch, step, config (OmegaConf is stored as plain containers), metrics.
    """
    path = os.fspath(path).rstrip('/')
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    state = _plain({'optimizer': optimizer_state, 'lr_scheduler': scheduler_state, 'scaler': scaler_state,
                    **(extra or {})}, 'checkpoint')
    weights = _weights_for_saving(model_state)
    if path.endswith(('.pth', '.pt')):
        _save_single_file(path, {'model': weights, **state})
    else:
        _save_directory(path, weights, state)
    _fsync_path(folder)
    return path


def _save_single_file(path: str, content: Dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=osp.dirname(osp.abspath(path)))
    os.close(fd)
    try:
        _write_file(tmp, lambda p: torch.save(content, p))
        os.replace(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            os.remove(tmp)
        raise


def _save_directory(path: str, weights: Dict[str, torch.Tensor], state: Dict[str, Any]) -> None:
    parent = osp.dirname(osp.abspath(path))
    tmp = tempfile.mkdtemp(prefix=f'.{osp.basename(path)}.', suffix='.tmp', dir=parent)
    old = None
    try:
        _write_file(osp.join(tmp, WEIGHTS_FILE), lambda p: save_safetensors(weights, p))
        _write_file(osp.join(tmp, STATE_FILE), lambda p: torch.save(state, p))
        _fsync_path(tmp)
        if osp.lexists(path):
            old = tempfile.mkdtemp(prefix=f'.{osp.basename(path)}.', suffix='.old', dir=parent)
            os.replace(path, osp.join(old, 'previous'))
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not osp.lexists(path) and osp.lexists(osp.join(old, 'previous')):
            os.replace(osp.join(old, 'previous'), path)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def is_complete(path: str) -> bool:
    """True for a finished checkpoint: a directory with both files and a valid safetensors header, or a
    `.pth`/`.pt` zip file whose central directory (written last) is readable."""
    path = os.fspath(path)
    if osp.basename(path.rstrip('/')).startswith('.'):
        return False
    if is_checkpoint_dir(path):
        try:
            from safetensors import safe_open
            with safe_open(osp.join(path, WEIGHTS_FILE), framework='pt'):
                pass
        except (SafetensorError, OSError):
            return False
        return zipfile.is_zipfile(osp.join(path, STATE_FILE))
    return osp.isfile(path) and path.endswith(('.pth', '.pt')) and zipfile.is_zipfile(path)


def find_latest_checkpoint(folder: str) -> Optional[str]:
    """Newest (by modification time, then name) complete checkpoint directly inside `folder`, or None."""
    if not osp.isdir(folder):
        return None
    candidates = [osp.join(folder, name) for name in os.listdir(folder)]
    complete = [p for p in candidates if is_complete(p)]
    if not complete:
        return None
    return max(complete, key=lambda p: (os.stat(p).st_mtime_ns, _natural_key(osp.basename(p))))


def _natural_key(name: str) -> list:
    """'ckpt_epoch_10' sorts after 'ckpt_epoch_9'."""
    return [(0, int(part), '') if part.isdigit() else (1, 0, part) for part in re.split(r'(\d+)', name)]


def map_published_keys(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rename keys by PUBLISHED_KEY_MAP (prefix -> replacement), e.g. strip DDP's 'module.'."""
    out = {}
    for key, value in state_dict.items():
        for prefix, replacement in PUBLISHED_KEY_MAP.items():
            if key.startswith(prefix):
                key = replacement + key[len(prefix):]
                break
        out[key] = value
    return out


def resize_pos_embed(pos_embed: torch.Tensor, num_patches: int) -> torch.Tensor:
    """pos_embed: [1, h*w, C] on a square grid -> [1, num_patches, C], bicubic (align_corners=False)."""
    side_old, side_new = math.isqrt(pos_embed.shape[1]), math.isqrt(num_patches)
    grid = pos_embed.reshape(1, side_old, side_old, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=(side_new, side_new), mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, num_patches, -1).to(pos_embed.dtype)


def _resizable_pos_embed(name: str, loaded: torch.Tensor, target: torch.Tensor) -> bool:
    if name.split('.')[-1] != 'pos_embed' or loaded.dim() != 3 or target.dim() != 3:
        return False
    n_old, n_new = loaded.shape[1], target.shape[1]
    return (loaded.shape[0] == target.shape[0] == 1 and loaded.shape[2] == target.shape[2]
            and math.isqrt(n_old)**2 == n_old and math.isqrt(n_new)**2 == n_new)


def _summary(names: List[str], limit: int = 10) -> str:
    shown = ', '.join(names[:limit])
    return shown + (f', ... ({len(names) - limit} more)' if len(names) > limit else '')


def load_weights(model: torch.nn.Module, path: str, strict: bool = True) -> Tuple[List[str], List[str]]:
    """Load the weights of any supported checkpoint into `model`; returns (missing, unexpected) names.

    Keys go through PUBLISHED_KEY_MAP, then the model's `adapt_checkpoint(state_dict)` when it has one (a method's
    own published-name rules, e.g. OVSegmentor's evaluation model dropping the training heads); a `*.pos_embed`
    [1, h*w, C] for another grid is resized bicubically.
    strict=True raises CheckpointError (before changing the model) on any missing, unexpected or mis-shaped name.
    strict=False loads what matches; mis-shaped names are skipped and reported as missing; all are logged.
    """
    path = os.fspath(path)
    weights = map_published_keys(extract_state_dict(read_checkpoint(path), path))
    if hasattr(model, 'adapt_checkpoint'):
        weights = model.adapt_checkpoint(weights)
    target = model.state_dict()
    mismatched, mismatched_names = [], set()
    for name, tensor in list(weights.items()):
        if name not in target or tensor.shape == target[name].shape:
            continue
        if _resizable_pos_embed(name, tensor, target[name]):
            weights[name] = resize_pos_embed(tensor, target[name].shape[1])
            logger.info('%s: resized %s from %s to %s', path, name, tuple(tensor.shape), tuple(target[name].shape))
        else:
            mismatched.append(f'{name} (file {tuple(tensor.shape)}, model {tuple(target[name].shape)})')
            mismatched_names.add(name)
            del weights[name]
    missing = [name for name in target if name not in weights]
    unexpected = [name for name in weights if name not in target]
    absent = [name for name in missing if name not in mismatched_names]
    problems = [f'{label}: {_summary(names)}' for label, names in
                (('missing', absent), ('unexpected', unexpected), ('shape mismatch', mismatched)) if names]
    if strict and problems:
        raise CheckpointError(f'{path} does not fit {type(model).__name__}: ' + '; '.join(problems))
    model.load_state_dict({k: v for k, v in weights.items() if k in target}, strict=False)
    for problem in problems:
        logger.warning('%s: %s', path, problem)
    return missing, unexpected


def build_and_load(model_cfg, checkpoint: Optional[str] = None, strict: bool = True) -> torch.nn.Module:
    """Build the model of `model_cfg` (a config's `model` section) and load `checkpoint`'s weights into it with
    `load_weights`; without a checkpoint the model keeps its fresh initialisation."""
    from models import build_model  # models import utils: imported when first needed
    model = build_model(model_cfg)
    if checkpoint is not None:
        load_weights(model, checkpoint, strict=strict)
    return model
