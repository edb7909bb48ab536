"""Training-step recipes: which levers a measured step uses.

`published`: our model with its defaults (float32, the published attention arithmetic, torch's default AdamW,
the full 77-token context) -- the same settings the peer gets out of the box.
`fast`: the levers that measured faster on the device (see benchmarks/NOTES.md).
"""
from dataclasses import asdict, dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class Recipe:
    name: str
    amp_dtype: Optional[torch.dtype] = None  # autocast dtype; None: float32
    fused_attn: bool = False                # image encoder attention through F.scaled_dot_product_attention
    math_sdpa: bool = False                 # restrict scaled_dot_product_attention to its plain-math kernel
    fused_adamw: bool = False               # torch.optim.AdamW(fused=True)
    trim: bool = False                      # cut the token batch after its last end-of-text token
    compile: bool = False                   # torch.compile the forward pass
    channels_last: bool = False             # channels-last image and patch-embedding convolution

    def describe(self) -> dict:
        out = asdict(self)
        out['amp_dtype'] = 'float32' if self.amp_dtype is None else str(self.amp_dtype).replace('torch.', '')
        return out

    def model_opts(self):
        return [f'img_encoder.fused_attn={str(self.fused_attn).lower()}']


PUBLISHED = Recipe('published')


def fast_recipe(device_type: str, compile: bool = False) -> Recipe:
    """CPU: bf16 autocast with the explicit attention (the CPU flash kernel's bf16 backward and the math kernel's
    float32 upcast are both slower); CUDA: bf16 autocast with fused (flash) attention."""
    if device_type == 'cuda':
        return Recipe('fast', torch.bfloat16, fused_attn=True, fused_adamw=True, trim=True, compile=compile)
    return Recipe('fast', torch.bfloat16, fused_attn=False, math_sdpa=True, fused_adamw=True, trim=True,
                  compile=compile)


def peer_recipe(device_type: str) -> Recipe:
    """The levers that also apply to the Hugging Face model (its attention is always the explicit one)."""
    return Recipe('peer_fast', fast_recipe(device_type).amp_dtype, fused_adamw=True, trim=True)
