"""CLIP-style transformer blocks and text transformer (causal mask, pooled at the end-of-text token)."""
from collections import OrderedDict

import torch
import torch.nn as nn
import torch.utils.checkpoint as checkpoint

from .builder import MODELS


class QuickGELU(nn.Module):

    def forward(self, x):
        return x * torch.sigmoid(1.702 * x)


class ResidualAttentionBlock(nn.Module):
    """Pre-norm block with `nn.MultiheadAttention` (CLIP's parameter layout): x [L, B, C].

    Sequence-first like the published code: a batch-first module takes PyTorch's fused fast path in eval,
    which changes the last bits of the embeddings.
    """

    def __init__(self, d_model: int, n_head: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, n_head)
        self.ln_1 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(OrderedDict([
            ('c_fc', nn.Linear(d_model, d_model * 4)), ('gelu', QuickGELU()), ('c_proj', nn.Linear(d_model * 4, d_model))]))
        self.ln_2 = nn.LayerNorm(d_model)

    def forward(self, x, attn_mask):
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):

    def __init__(self, width: int, layers: int, heads: int, use_checkpoint=False):
        super().__init__()
        self.width = width
        self.layers = layers
        self.use_checkpoint = use_checkpoint
        self.resblocks = nn.Sequential(*[ResidualAttentionBlock(width, heads) for _ in range(layers)])
        proj_std = (width ** -0.5) * ((2 * layers) ** -0.5)
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=width ** -0.5)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=(2 * width) ** -0.5)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)

    def forward(self, x, attn_mask):
        """x: [L, B, C] -> [L, B, C]"""
        for block in self.resblocks:
            if self.use_checkpoint and self.training:
                x = checkpoint.checkpoint(block, x, attn_mask, use_reentrant=False)
            else:
                x = block(x, attn_mask)
        return x


@MODELS.register_module()
class TextTransformer(nn.Module):
    """Arguments mirror `model.text_encoder`.

    trim_context: run only up to the batch's last end-of-text token. The same function (the mask is causal and the
        output is read at end-of-text), not the same bits; 2-4x less text compute on web captions.
    """

    def __init__(self, context_length: int, width: int, layers: int, vocab_size: int, use_checkpoint=False,
                 trim_context: bool = False):
        super().__init__()
        self.context_length = context_length
        self.trim_context = trim_context
        self.width = width
        self.transformer = Transformer(width, layers, heads=max(width // 64, 1), use_checkpoint=use_checkpoint)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.ln_final = nn.LayerNorm(width)
        self.token_embedding = nn.Embedding(vocab_size, width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        self.register_buffer('attn_mask', torch.full((context_length, context_length), float('-inf')).triu_(1),
                             persistent=False)

    def forward(self, text) -> torch.Tensor:
        """text: [B, L] token ids (end-of-text has the largest id) -> [B, width] at the end-of-text token"""
        if self.trim_context:
            text = text[:, :int(text.argmax(dim=-1).max()) + 1]
        L = text.shape[1]
        x = self.token_embedding(text) + self.positional_embedding[:L]
        x = self.transformer(x.transpose(0, 1), self.attn_mask[:L, :L].to(x.dtype)).transpose(0, 1)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)]
