"""Safe reader of OpenAI's CLIP files (`ViT-B-16.pt`, ...), which are TorchScript archives.

Such a file is a zip holding `<root>/data.pkl` (the pickled module tree), `<root>/data/<n>` (the raw bytes of each
tensor storage), `<root>/constants.pkl` and `<root>/code/` (TorchScript). Nothing in it is run: neither
`torch.jit.load` (which compiles `code/`) nor `pickle.load` (which calls whatever `data.pkl` names). `data.pkl` is
read with an allowlist unpickler that knows only
- `torch._utils._rebuild_tensor_v2` / `_rebuild_parameter` and the `torch.<Type>Storage` ids of the storages (the
  tensors are rebuilt here from the storage bytes, never by torch's own unpickling code),
- `collections.OrderedDict` and TorchScript's list builders (`torch.jit._pickle.build_*list`, `restore_type_tag`),
- every `__torch__.*` class (the archive's modules), each turned into an inert attribute holder.
Any other global (`os.system`, `builtins.eval`, ...) stops the read with one CheckpointError line before anything
runs. The module tree's tensors are collected under their attribute paths, which are OpenAI's state-dict names.
A plain `torch.save` state dict (a zip with `data.pkl` holding a dict of tensors) is read the same way.
"""
import collections
import io
import os
import os.path as osp
import pickle
import zipfile
from _compat_pickle import IMPORT_MAPPING, NAME_MAPPING
from typing import Any, Dict, NamedTuple, Tuple

import torch

from utils.checkpoint import CheckpointError

# integers OpenAI's files hold next to the weights (as 0-dim int64 tensors or as plain attributes)
ARCHITECTURE_INTEGERS = ('input_resolution', 'context_length', 'vocab_size')

_STORAGE_DTYPES = {
    'HalfStorage': torch.float16, 'FloatStorage': torch.float32, 'DoubleStorage': torch.float64,
    'BFloat16Storage': torch.bfloat16, 'LongStorage': torch.int64, 'IntStorage': torch.int32,
    'ShortStorage': torch.int16, 'CharStorage': torch.int8, 'ByteStorage': torch.uint8, 'BoolStorage': torch.bool,
}


class OpenAIFile(NamedTuple):
    state_dict: Dict[str, torch.Tensor]  # OpenAI's names; floating tensors as float32
    integers: Dict[str, int]             # those of ARCHITECTURE_INTEGERS the file holds


class _RefusedGlobal(pickle.UnpicklingError):

    def __init__(self, qualname: str):
        super().__init__(qualname)
        self.qualname = qualname


class ScriptObject:
    """Stand-in for every `__torch__.*` class of an archive: keeps the attributes the pickle sets, runs nothing."""

    def __new__(cls, *args, **kwargs):
        return super().__new__(cls)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, tuple) and len(state) == 2 and isinstance(state[0], dict):
            state = state[0]
        self.__dict__['_attributes'] = dict(state) if isinstance(state, dict) else {'_state': state}

    @property
    def attributes(self) -> Dict[str, Any]:
        return self.__dict__.get('_attributes', {})


class _StorageType:
    """What `torch.<Type>Storage` resolves to: only its dtype is used."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _int_tuple(value, what: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list)) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise pickle.UnpicklingError(f'tensor {what} must be a tuple of integers, got {value!r}')
    return tuple(value)


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored) -> torch.Tensor:
    """The tensor `size`/`stride` view at `storage_offset` of a storage (a 1-D tensor of its dtype)."""
    if not isinstance(storage, torch.Tensor) or not isinstance(storage_offset, int):
        raise pickle.UnpicklingError('tensor record without a storage of this archive')
    size, stride = _int_tuple(size, 'size'), _int_tuple(stride, 'stride')
    if len(size) != len(stride) or storage_offset < 0 or any(s < 0 for s in (*size, *stride)):
        raise pickle.UnpicklingError(f'invalid tensor layout: size {size}, stride {stride}, offset {storage_offset}')
    if any(s == 0 for s in size):
        return storage.new_empty(size)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel():
        raise pickle.UnpicklingError(f'tensor of size {size} reads past the end of its storage ({storage.numel()} '
                                     'elements)')
    return storage.as_strided(size, stride, storage_offset)


def _rebuild_parameter(data, *_ignored) -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        raise pickle.UnpicklingError('parameter record without a tensor')
    return data


def _restore_type_tag(value, _type_str):
    return value


_ALLOWED_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch.jit._pickle', 'build_intlist'): list,
    ('torch.jit._pickle', 'build_doublelist'): list,
    ('torch.jit._pickle', 'build_boollist'): list,
    ('torch.jit._pickle', 'build_tensorlist'): list,
    ('torch.jit._pickle', 'restore_type_tag'): _restore_type_tag,
}


class _ArchiveUnpickler(pickle.Unpickler):
    """Allowlist unpickler over `<root>/data.pkl`; storages come from `<root>/data/<key>` of the same zip."""

    def __init__(self, data: bytes, archive: zipfile.ZipFile, root: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.root = archive, root
        self.storages: Dict[str, torch.Tensor] = {}

    def find_class(self, module, name):
        if module == '__torch__' or module.startswith('__torch__.'):
            return ScriptObject
        if module == 'torch' and name in _STORAGE_DTYPES:
            return _StorageType(name)
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        module, name = NAME_MAPPING.get((module, name), (IMPORT_MAPPING.get(module, module), name))
        raise _RefusedGlobal(f'{module}.{name}')  # named as Python 3 spells it

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f'unknown persistent id {pid!r:.80}')
        _, storage_type, key, _location, numel = pid
        if key not in self.storages:
            member = f'{self.root}/data/{key}'
            try:
                raw = self.archive.read(member)
            except KeyError:
                raise pickle.UnpicklingError(f'storage {member} is missing from the archive') from None
            itemsize = torch.empty((), dtype=storage_type.dtype).element_size()
            if len(raw) < numel * itemsize:
                raise pickle.UnpicklingError(f'storage {member} holds {len(raw)} bytes, expected {numel * itemsize}')
            flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            self.storages[key] = flat[:numel * itemsize].view(storage_type.dtype)
        return self.storages[key]


def _data_root(archive: zipfile.ZipFile, path: str) -> str:
    roots = sorted({name[:-len('/data.pkl')] for name in archive.namelist()
                    if name.endswith('/data.pkl') and name.count('/') == 1})
    if len(roots) != 1:
        raise CheckpointError(f'{path}: not a TorchScript/torch archive ({len(roots)} <root>/data.pkl entries, '
                              'expected 1)')
    return roots[0]


def _collect(node, prefix: str, tensors: Dict[str, torch.Tensor], integers: Dict[str, int], seen: set) -> None:
    """Tensors of a module tree (ScriptObject attributes or dicts) under their dotted attribute paths."""
    if id(node) in seen:
        return
    seen.add(id(node))
    items = node.attributes.items() if isinstance(node, ScriptObject) else node.items()
    for name, value in items:
        if not isinstance(name, str):
            continue
        key = prefix + name
        if isinstance(value, torch.Tensor):
            if key in ARCHITECTURE_INTEGERS and value.numel() == 1 and not value.is_floating_point():
                integers[key] = int(value.item())
            else:
                tensors[key] = value
        elif isinstance(value, (ScriptObject, dict)):
            _collect(value, key + '.', tensors, integers, seen)
        elif key in ARCHITECTURE_INTEGERS and isinstance(value, int) and not isinstance(value, bool):
            integers[key] = value


def read_openai_file(path: str) -> OpenAIFile:
    """OpenAI's CLIP file (TorchScript archive) or a torch.save'd state dict -> OpenAIFile; runs nothing it holds."""
    path = os.fspath(path)
    if not osp.isfile(path):
        raise CheckpointError(f'{path}: no such file')
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f'{path}: not a zip archive, so not an OpenAI CLIP file (TorchScript) or a torch.save '
                              'state dict')
    with zipfile.ZipFile(path) as archive:
        root = _data_root(archive, path)
        byteorder = f'{root}/byteorder'
        if byteorder in archive.namelist() and archive.read(byteorder).strip() != b'little':
            raise CheckpointError(f'{path}: big-endian archives are not supported')
        unpickler = _ArchiveUnpickler(archive.read(f'{root}/data.pkl'), archive, root)
        try:
            tree = unpickler.load()
        except _RefusedGlobal as e:
            raise CheckpointError(f"{path}: refused to unpickle '{e.qualname}': an OpenAI CLIP file holds only "
                                  'TorchScript modules and tensors (the file may be malicious)') from None
        except Exception as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise CheckpointError(f'{path}: unreadable data.pkl ({type(e).__name__}: {reason})') from None
    if not isinstance(tree, (ScriptObject, dict)):
        raise CheckpointError(f'{path}: data.pkl holds a {type(tree).__name__}, not a module or a state dict')
    tensors, integers = {}, {}
    _collect(tree, '', tensors, integers, set())
    if not tensors:
        raise CheckpointError(f'{path}: no tensors in the archive')
    state_dict = {k: (v.float() if v.is_floating_point() else v.clone()) for k, v in tensors.items()}
    return OpenAIFile(state_dict, integers)


def architecture_from_state_dict(state_dict: Dict[str, torch.Tensor], source: str = '<state dict>') -> dict:
    """OpenAI state dict -> CLIP constructor arguments, read from the shapes (as OpenAI's `build_model`)."""
    needed = ('visual.conv1.weight', 'visual.positional_embedding', 'visual.proj', 'text_projection',
              'positional_embedding', 'token_embedding.weight', 'ln_final.weight')
    if 'visual.proj' not in state_dict and any(k.startswith('visual.layer1.') for k in state_dict):
        raise CheckpointError(f'{source}: a ResNet CLIP; only ViT CLIP files are supported')
    missing = [k for k in needed if k not in state_dict]
    if missing:
        raise CheckpointError(f'{source}: not a CLIP ViT state dict (missing {", ".join(missing)})')
    patch_size = state_dict['visual.conv1.weight'].shape[-1]
    grid = round((state_dict['visual.positional_embedding'].shape[0] - 1) ** 0.5)
    width = state_dict['ln_final.weight'].shape[0]

    def count_blocks(prefix):
        return len({k[len(prefix):].split('.')[0] for k in state_dict if k.startswith(prefix)})

    return dict(embed_dim=state_dict['text_projection'].shape[1], image_resolution=patch_size * grid,
                vision_layers=count_blocks('visual.transformer.resblocks.'),
                vision_width=state_dict['visual.conv1.weight'].shape[0], vision_patch_size=patch_size,
                context_length=state_dict['positional_embedding'].shape[0],
                vocab_size=state_dict['token_embedding.weight'].shape[0], transformer_width=width,
                transformer_heads=width // 64, transformer_layers=count_blocks('transformer.resblocks.'))
