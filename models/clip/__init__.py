"""OpenAI CLIP, shared by the CLIP-based methods: the architecture with OpenAI's names (`model.py`) and a reader of
OpenAI's TorchScript files that runs nothing they contain (`openai_file.py`)."""
import os.path as osp
from collections.abc import Mapping

from omegaconf import DictConfig, OmegaConf

from .model import CLIP, CLIP_ARCHITECTURES, VisionTransformer, resize_positional_embedding
from .openai_file import OpenAIFile, architecture_from_state_dict, read_openai_file


def build_clip(clip_model) -> CLIP:
    """clip_model: an architecture name of CLIP_ARCHITECTURES ('ViT-B/16': random weights, nothing downloaded),
    a mapping of CLIP's constructor arguments (random weights), or the path of an OpenAI CLIP file (its weights,
    architecture read from the shapes) -> CLIP in float32."""
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


def clip_from_openai_file(path: str) -> CLIP:
    """The CLIP an OpenAI file describes, with its weights (float32); extra tensors in the file are ignored."""
    state_dict, _ = read_openai_file(path)
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


__all__ = ['CLIP', 'CLIP_ARCHITECTURES', 'VisionTransformer', 'OpenAIFile', 'build_clip', 'clip_from_openai_file',
           'read_openai_file', 'architecture_from_state_dict', 'resize_positional_embedding']
