"""OpenAI CLIP (ViT image encoder + causal text transformer), with OpenAI's state-dict names.

Parameter names are exactly those of OpenAI's files (`visual.conv1.weight`, `visual.transformer.resblocks.N.attn.
in_proj_weight`, `token_embedding.weight`, `text_projection`, `logit_scale`, ...), so a state dict read from
`ViT-B-16.pt` loads strictly. The blocks are `models.text_transformer`'s (`nn.MultiheadAttention`, sequence-first,
QuickGELU), the same arithmetic as OpenAI's code.
"""
import math
from typing import Dict, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..text_transformer import Transformer

# OpenAI's released ViT architectures (clip/clip.py `_MODELS`), as CLIP constructor arguments
CLIP_ARCHITECTURES: Dict[str, dict] = {
    'ViT-B/32': dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    'ViT-B/16': dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    'ViT-L/14': dict(embed_dim=768, image_resolution=224, vision_layers=24, vision_width=1024, vision_patch_size=14,
                     context_length=77, vocab_size=49408, transformer_width=768, transformer_heads=12,
                     transformer_layers=12),
    'ViT-L/14@336px': dict(embed_dim=768, image_resolution=336, vision_layers=24, vision_width=1024,
                           vision_patch_size=14, context_length=77, vocab_size=49408, transformer_width=768,
                           transformer_heads=12, transformer_layers=12),
}


# rules for resizing the position embedding to another patch grid (see resize_positional_embedding)
POS_EMBED_RESIZE_RULES = ('scale_factor', 'size')


def resize_positional_embedding(positional_embedding: torch.Tensor, grid: Tuple[int, int],
                                rule: str = 'scale_factor') -> torch.Tensor:
    """positional_embedding: [1 + n*n, C] (class token first, square n x n grid) -> [1 + h*w, C] for grid (h, w).

    rule 'scale_factor': bicubic (align_corners False) with scale_factor ((h + 0.1) / n, (w + 0.1) / n), as SCLIP,
    ClearCLIP and NACLIP resize it; `size=(h, w)` samples other points and gives other numbers.
    rule 'size': bicubic (align_corners False) with size=(h, w), kept as it is only for the n x n grid, as TCL's
    `interpolate_pos_emb` resizes it."""
    if rule not in POS_EMBED_RESIZE_RULES:
        raise ValueError(f'position embedding resize rule must be one of {POS_EMBED_RESIZE_RULES}, got {rule!r}')
    h, w = grid
    n = math.isqrt(positional_embedding.shape[0] - 1)
    if n * n != positional_embedding.shape[0] - 1:
        raise ValueError(f'positional embedding of {positional_embedding.shape[0]} rows is not 1 + a square grid')
    # the published code keeps the embedding as it is whenever the token count matches, even for a non-square grid
    if h * w == n * n and (rule == 'scale_factor' or h == w):
        return positional_embedding
    width = positional_embedding.shape[-1]
    patch = positional_embedding[1:].reshape(1, n, n, width).permute(0, 3, 1, 2)
    if rule == 'size':
        patch = F.interpolate(patch, size=(h, w), mode='bicubic', align_corners=False)
    else:
        patch = F.interpolate(patch, scale_factor=((h + 0.1) / n, (w + 0.1) / n), mode='bicubic',
                              align_corners=False, recompute_scale_factor=False)
    if tuple(patch.shape[-2:]) != (h, w):
        raise ValueError(f'bicubic resize of the {n}x{n} grid gave {tuple(patch.shape[-2:])}, expected {(h, w)}')
    return torch.cat([positional_embedding[:1], patch.permute(0, 2, 3, 1).reshape(h * w, width)])


class VisionTransformer(nn.Module):
    """CLIP's image encoder: 16x16 (patch_size) patches + class token, ln_pre, blocks, ln_post, proj."""

    def __init__(self, input_resolution: int, patch_size: int, width: int, layers: int, heads: int,
                 output_dim: int):
        super().__init__()
        self.input_resolution = input_resolution
        self.patch_size = patch_size
        self.output_dim = output_dim
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        scale = width ** -0.5
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((input_resolution // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))
        self.pos_embed_resize = 'scale_factor'  # rule of resize_positional_embedding for other input sizes

    def patch_grid(self, image: torch.Tensor) -> Tuple[int, int]:
        """image: [B, 3, H, W] -> (H // patch_size, W // patch_size); pixels past the last full patch are dropped."""
        h, w = image.shape[-2] // self.patch_size, image.shape[-1] // self.patch_size
        if h == 0 or w == 0:
            raise ValueError(f'image of {tuple(image.shape[-2:])} pixels is smaller than one {self.patch_size}-pixel '
                             'patch')
        return h, w

    def embed(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> tokens [1 + h*w, B, C] (class token first) after ln_pre."""
        grid = self.patch_grid(image)
        x = self.conv1(image.to(self.conv1.weight.dtype)).flatten(2).transpose(1, 2)  # [B, h*w, C]
        cls = self.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                              device=x.device)
        x = torch.cat([cls, x], dim=1)
        x = x + resize_positional_embedding(self.positional_embedding, grid, self.pos_embed_resize).to(x.dtype)
        return self.ln_pre(x).permute(1, 0, 2)

    def tokens_before_last_block(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> [1 + h*w, B, C]: the input of the last block (what training-free methods change)."""
        x = self.embed(image)
        for block in self.transformer.resblocks[:-1]:
            x = block(x, None)
        return x

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., C] -> [..., output_dim]: ln_post, then proj."""
        return self.ln_post(x) @ self.proj

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> [B, output_dim], the class token's embedding (vanilla CLIP)."""
        x = self.transformer(self.embed(image), None)
        return self.project(x[0])


class CLIP(nn.Module):
    """OpenAI CLIP with a ViT image encoder; the arguments are those of OpenAI's `CLIP` (heads = width // 64 in the
    image encoder, as OpenAI builds it)."""

    def __init__(self, embed_dim: int, image_resolution: int, vision_layers: int, vision_width: int,
                 vision_patch_size: int, context_length: int, vocab_size: int, transformer_width: int,
                 transformer_heads: int, transformer_layers: int):
        super().__init__()
        if vision_width % 64:
            raise ValueError(f'vision_width must be a multiple of 64 (heads of 64 channels), got {vision_width}')
        self.context_length = context_length
        self.visual = VisionTransformer(image_resolution, vision_patch_size, vision_width, vision_layers,
                                        vision_width // 64, embed_dim)
        self.transformer = Transformer(transformer_width, transformer_layers, transformer_heads)
        self.vocab_size = vocab_size
        self.token_embedding = nn.Embedding(vocab_size, transformer_width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, transformer_width))
        self.ln_final = nn.LayerNorm(transformer_width)
        self.text_projection = nn.Parameter(torch.empty(transformer_width, embed_dim))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))
        self.register_buffer('attn_mask', torch.full((context_length, context_length), float('-inf')).triu_(1),
                             persistent=False)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=transformer_width ** -0.5)

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.conv1.weight.dtype

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] normalised with CLIP's mean/std -> [B, embed_dim] (unnormalised)."""
        return self.visual(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """text: [B, L] token ids, L <= context_length (end-of-text has the largest id) -> [B, embed_dim]
        (unnormalised). A shorter L uses the first L positions and the top-left L x L of the causal mask, as
        SegCLIP's copy of CLIP does for its 32-token training captions."""
        L = text.shape[1]
        if L > self.context_length:
            raise ValueError(f'text of {L} tokens is longer than the context length {self.context_length}')
        x = self.token_embedding(text).to(self.dtype) + self.positional_embedding[:L].to(self.dtype)
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask[:L, :L].to(x.dtype)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection
