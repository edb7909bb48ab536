"""The benchmark's peer: Hugging Face transformers' `GroupViTModel` holding the same weights as one of our models.

The config and the weight mapping are tools/export_hf.py's (no download); the peer is built with random-free,
copied weights so that both compute the same function on the same inputs.
"""
import torch.nn as nn
from omegaconf import DictConfig

from tools.export_hf import hf_config, to_hf_state


class PeerError(RuntimeError):
    """The Hugging Face model cannot hold our model's weights."""


def build_peer(model_cfg: DictConfig, model: nn.Module) -> nn.Module:
    """model_cfg: the `model` config section `model` was built from -> transformers GroupViTModel, same weights.

    PGSeg's prototype modules have no place in the peer (they are left out: the peer is the GroupViT backbone).
    """
    from transformers import GroupViTModel

    state = {k: v.detach() for k, v in model.state_dict().items()}
    peer = GroupViTModel(hf_config(model_cfg, state))
    hf_state, _ = to_hf_state(state)
    missing, unexpected = peer.load_state_dict(hf_state, strict=False)
    if missing or unexpected:
        raise PeerError(f'weights do not fit GroupViTModel: missing {missing[:3]}, unexpected {unexpected[:3]}')
    return peer.to(next(model.parameters()).device)
