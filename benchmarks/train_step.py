"""One training step (forward, backward, AdamW) of our models and of the Hugging Face peer, as closures."""
import contextlib
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import yaml
from omegaconf import DictConfig, OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from models import build_model
from utils.config import load_config

from .recipes import Recipe


def load_model_cfg(cfg_path: str, opts: Sequence[str] = ()) -> DictConfig:
    """The `model` section of a config file plus 'a.b=c' overrides of it (e.g. 'img_encoder.fused_attn=true')."""
    cfg = load_config(cfg_path).model
    for opt in opts:
        key, value = opt.split('=', 1)
        OmegaConf.update(cfg, key, yaml.safe_load(value), merge=False)
    return cfg


def build_ours(model_cfg: DictConfig, device='cpu', seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(model_cfg).to(device)


# Web-caption-like texts (CC3M captions average about ten words); their tokens are the benchmark's text input.
CAPTIONS = (
    'a dog running on the beach',
    'portrait of a young woman with long hair standing in a field of flowers at sunset',
    'the city skyline at night',
    'a red car parked in front of an old brick building on a quiet street',
    'illustration of a cartoon cat sitting on a chair',
    'people walking through a busy market in the old town',
    'a bowl of fresh fruit on a wooden table',
    'aerial view of a river winding through a green valley with mountains in the background',
    'a man riding a bicycle',
    'close up of a bee collecting pollen from a yellow flower in the garden',
    'a plate of pasta with tomato sauce and basil',
    'children playing football in the park on a sunny afternoon',
    'snow covered trees in the forest',
    'a vintage camera and a stack of books',
    'the interior of a modern kitchen with white cabinets and a large window',
    'two horses grazing in a meadow',
)


def make_text(batch: int, num_prompts: int, context_length: int = 77, seed: int = 0) -> torch.Tensor:
    """Token ids of `batch` captions: [B, L], or [B, 1 + k, L] with k prompted words (the training transform)."""
    from omegaconf import OmegaConf as OC

    from datasets import build_text_transform
    np.random.seed(seed)
    aug = OC.create({'multi_label': num_prompts, 'max_seq_len': context_length, 'word_type': 'noun'})
    transform = build_text_transform(True, aug)
    return torch.stack([transform(CAPTIONS[i % len(CAPTIONS)]) for i in range(batch)])


def make_inputs(batch: int, img_size: int, num_prompts: int, context_length: int = 77, device='cpu', seed: int = 0):
    """Normalised-looking images [B, 3, S, S] and caption tokens [B, L] or [B, 1 + num_prompts, L]."""
    image = torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(seed))
    return image.to(device), make_text(batch, num_prompts, context_length, seed).to(device)


def make_optimizer(model: nn.Module, fused: bool = False) -> torch.optim.Optimizer:
    """AdamW over every parameter; `fused` uses PyTorch's single-kernel implementation."""
    kwargs = {'fused': True} if fused else {}
    return torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.05, **kwargs)


def autocast(device, dtype: Optional[torch.dtype], math_sdpa: bool = False):
    """bf16/fp16 autocast (dtype None: float32); `math_sdpa` restricts scaled_dot_product_attention to its
    plain-math kernel (on CPU its flash kernel's bf16 backward is slower than matmul + softmax)."""
    stack = contextlib.ExitStack()
    if dtype is not None:
        stack.enter_context(torch.autocast(torch.device(device).type, dtype=dtype))
    if math_sdpa:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
    return stack


def trim_context(text: torch.Tensor) -> torch.Tensor:
    """text: [..., L] token ids -> [..., L'] cut after the batch's last end-of-text token (the largest id).

    Exact for a causal text encoder pooled at end-of-text: no kept position attends to a cut one.
    """
    return text[..., :int(text.argmax(dim=-1).max()) + 1]


def our_step(model: nn.Module, image, text, recipe: Recipe) -> Callable[[], torch.Tensor]:
    """-> step(): one training step of our model under `recipe`; returns the total loss."""
    optimizer = make_optimizer(model, recipe.fused_adamw)
    forward = torch.compile(model.forward_train) if recipe.compile else model.forward_train
    if recipe.channels_last:
        model.img_encoder.patch_embed.to(memory_format=torch.channels_last)
        image = image.contiguous(memory_format=torch.channels_last)
    model.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(image.device, recipe.amp_dtype, recipe.math_sdpa):
            loss = sum(forward(image, trim_context(text) if recipe.trim else text).values())
        loss.backward()
        optimizer.step()
        return loss.detach()

    step.drop_grads = lambda: optimizer.zero_grad(set_to_none=True)
    return step


def peer_step(peer: nn.Module, image, text, recipe: Recipe) -> Callable[[], torch.Tensor]:
    """-> step(): one training step of the Hugging Face GroupViTModel (`return_loss=True`: its contrastive loss).
    The peer has no multi-label loss, so it gets the caption only ([B, L])."""
    optimizer = make_optimizer(peer, recipe.fused_adamw)
    text = text[:, 0] if text.dim() == 3 else text
    peer.train()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast(image.device, recipe.amp_dtype, recipe.math_sdpa):
            ids = trim_context(text) if recipe.trim else text
            loss = peer(input_ids=ids, pixel_values=image, return_loss=True).loss
        loss.backward()
        optimizer.step()
        return loss.detach()

    step.drop_grads = lambda: optimizer.zero_grad(set_to_none=True)
    return step


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of one call (matmuls and convolutions, as counted by FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()
