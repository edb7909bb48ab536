"""Deterministic, init-independent weights for comparing models with reference outputs."""
import json
from pathlib import Path

import torch


def synthetic_state_dict(state_dict, seed=0):
    """Same keys and shapes as `state_dict`, filled from a seeded generator in sorted-key order.

    Norm weights are 1 + noise, running variances positive, prototype buffers unit-norm like the originals.
    """
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(state_dict):
        ref = state_dict[name]
        if not ref.is_floating_point():
            out[name] = torch.zeros_like(ref)
            continue
        noise = torch.randn(ref.shape, generator=gen, dtype=torch.float32)
        if name.endswith('running_var'):
            value = 1 + 0.1 * noise.abs()
        elif name.endswith('mu'):
            value = noise / noise.norm(dim=1 if name.startswith('text_encoder') else 2, keepdim=True)
        elif name.endswith('logit_scale'):
            value = torch.full(ref.shape, 2.5)
        elif ref.dim() == 1 and ('norm' in name or 'ln_' in name or '.1.weight' in name):
            # zero-mean biases keep PGSeg's channel-mean text groups of mixed sign (else its text loss is NaN)
            value = 1 + 0.1 * noise if name.endswith('weight') else 0.1 * (noise - noise.mean())
        else:
            value = 0.05 * noise
        out[name] = value.to(ref.dtype)
    return out


CLIP_B16_FILE = Path(__file__).parent / 'data' / 'clip_vit_b16_state_dict.json'


def openai_clip_entries():
    """name -> {'shape', 'stored_dtype'} of the 305 entries of OpenAI's ViT-B-16.pt (tests/data/README.md)."""
    return json.loads(CLIP_B16_FILE.read_text())['entries']


def openai_like_state_dict(state_dict, seed=0, entries=None):
    """synthetic_state_dict of a CLIP state dict, every tensor rounded through the dtype OpenAI's file stores it in
    (float16 for the linear, conv and projection weights), as OpenAI's file holds it and its loaders read it."""
    entries = openai_clip_entries() if entries is None else entries
    out = synthetic_state_dict(state_dict, seed=seed)
    for name, value in out.items():
        stored = entries.get(name, {}).get('stored_dtype', 'float32')
        out[name] = value.to(getattr(torch, stored)).to(value.dtype)
    return out
