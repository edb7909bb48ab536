"""OpenAI CLIP, shared by the CLIP-based methods: the architecture with OpenAI's names (`model.py`) and a reader of
OpenAI's TorchScript files that runs nothing they contain (`openai_file.py`)."""
import os.path as osp
from collections.abc import Mapping
from typing import Dict

import torch
from omegaconf import DictConfig, OmegaConf

from .model import (CLIP, CLIP_ARCHITECTURES, POS_EMBED_RESIZE_RULES, VisionTransformer,
                    resize_positional_embedding)
from .openai_file import OpenAIFile, architecture_from_state_dict, read_openai_file

# where a checkpoint of this project keeps a whole CLIP under OpenAI's names ('clip.': the ContrastiveCLIP method)
CLIP_PREFIXES = ('', 'clip.')


def build_clip(clip_model) -> CLIP:
    """clip_model: an architecture name of CLIP_ARCHITECTURES ('ViT-B/16': random weights, nothing downloaded),
    a mapping of CLIP's constructor arguments (random weights), the path of an OpenAI CLIP file or of a checkpoint of
    this project holding a CLIP (its weights, architecture read from the shapes), or a CLIP already built (returned as
    it is) -> CLIP (float32 unless already built)."""
    if isinstance(clip_model, CLIP):
        return clip_model
    if isinstance(clip_model, DictConfig):
        clip_model = OmegaConf.to_container(clip_model, resolve=True)
    if isinstance(clip_model, Mapping):
        return CLIP(**clip_model)
    if not isinstance(clip_model, str):
        raise ValueError(f'clip_model must be an architecture name, a mapping or a file path, got {clip_model!r}')
    if clip_model in CLIP_ARCHITECTURES:
        return CLIP(**CLIP_ARCHITECTURES[clip_model])
    if not osp.exists(clip_model):
        raise ValueError(f"clip_model '{clip_model}' is neither a CLIP architecture ({', '.join(CLIP_ARCHITECTURES)}) "
                         'nor an existing file')
    return clip_from_openai_file(clip_model)


def read_clip_weights(path: str) -> Dict[str, torch.Tensor]:
    """OpenAI's names -> float32 tensors of the CLIP a file holds: an OpenAI file or a torch.save state dict (read by
    `read_openai_file`, which runs nothing), or a `.safetensors` file or checkpoint folder of this project, whose
    weights hold a CLIP under one of CLIP_PREFIXES."""
    from utils.checkpoint import CheckpointError, extract_state_dict, is_checkpoint_dir, read_checkpoint
    if is_checkpoint_dir(path) or path.endswith('.safetensors'):
        weights = extract_state_dict(read_checkpoint(path), path)
    else:
        weights = read_openai_file(path).state_dict
    for prefix in CLIP_PREFIXES:
        if f'{prefix}visual.conv1.weight' in weights:
            return {k[len(prefix):]: (v.float() if v.is_floating_point() else v)
                    for k, v in weights.items() if k.startswith(prefix)}
    raise CheckpointError(f'{path}: holds no CLIP (no visual.conv1.weight under the prefixes {CLIP_PREFIXES})')


def clip_from_openai_file(path: str) -> CLIP:
    """The CLIP a file describes (see read_clip_weights), with its weights (float32); extra tensors are ignored."""
    state_dict = read_clip_weights(path)
    model = CLIP(**architecture_from_state_dict(state_dict, path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    wrong = [k for k in expected if k in state_dict and state_dict[k].shape != expected[k].shape]
    if missing or wrong:
        from utils.checkpoint import CheckpointError
        what = f'missing {missing[:3]}' if missing else f'shape of {wrong[0]} {tuple(state_dict[wrong[0]].shape)}'
        raise CheckpointError(f'{path}: does not fit the CLIP its shapes describe ({what})')
    model.load_state_dict({k: state_dict[k] for k in expected})
    return model


__all__ = ['CLIP', 'CLIP_ARCHITECTURES', 'CLIP_PREFIXES', 'POS_EMBED_RESIZE_RULES', 'VisionTransformer', 'OpenAIFile',
           'build_clip', 'clip_from_openai_file', 'read_clip_weights', 'read_openai_file',
           'architecture_from_state_dict', 'resize_positional_embedding']
