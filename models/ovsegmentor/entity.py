"""Masked entity completion: the caption with its entities masked (the question) reads the image's groups, and its
first position is matched to the embedding of the entities (the answer). Module and parameter names are the
published ones (`multimodal_groupingblock.blocks.<i>.*`)."""
from typing import Optional

import torch
import torch.nn as nn

from ..groupvit.grouping import AssignAttention
from ..layers import AttnBlock, CrossAttnBlock


def masked_self_attention(block: AttnBlock, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """block's pre-norm self-attention + MLP where padded keys (key_mask 0) get no attention.
    x: [B, L, C]; key_mask: [B, L] -> [B, L, C]"""
    attn = block.attn
    q, k, v = attn._split_qkv(block.norm1(x))
    logits = (q @ k.transpose(-2, -1)) * attn.scale
    logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], float('-inf'))
    out = (attn.attn_drop(logits.softmax(dim=-1)) @ v).transpose(1, 2).flatten(2)
    x = x + block.drop_path(attn.proj_drop(attn.proj(out)))
    return x + block.drop_path(block.mlp(block.norm2(x)))


class EntityBlock(nn.Module):
    """Question tokens cross-attend to the group tokens (post-norm), then a self-attention block over the question.

    `assign` is built and saved as published but never used. mask_padding: False (published) lets padded question
    positions take part in the self-attention (the published block is handed the attention mask and ignores it).
    """

    def __init__(self, dim: int, num_heads: int = 8, mask_padding: bool = False):
        super().__init__()
        self.mask_padding = mask_padding
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4, qkv_bias=True, post_norm=True)
        self.post_attn = AttnBlock(dim, num_heads, mlp_ratio=4, qkv_bias=True)
        self.assign = AssignAttention(dim, num_heads=1, qkv_bias=True, hard=False, gumbel=False)
        self.norm_new_x = nn.LayerNorm(dim)

    def forward(self, answer: Optional[torch.Tensor], groups: torch.Tensor, question: torch.Tensor,
                question_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """answer: [B, L, C] from the previous block or None; groups: [B, G, C]; question: [B, L, C];
        question_mask: [B, L] (1 = token) -> [B, L, C]"""
        projected = self.pre_assign_attn(self.norm_tokens(question), self.norm_x(groups))
        x = projected if answer is None else answer + projected
        if self.mask_padding and question_mask is not None:
            x = masked_self_attention(self.post_attn, x, question_mask)
        else:
            x = self.post_attn(x)
        return self.norm_new_x(x + projected)


class EntityHead(nn.Module):
    """`cross_layers` EntityBlocks; each reads the same question tokens. -> the first position [B, C]."""

    def __init__(self, dim: int, num_heads: int = 8, num_layers: int = 1, mask_padding: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList([EntityBlock(dim, num_heads, mask_padding) for _ in range(num_layers)])

    def forward(self, groups: torch.Tensor, question: torch.Tensor,
                question_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """groups: [B, G, C] unprojected group tokens; question: [B, L, C] token features -> [B, C]"""
        answer = None
        for block in self.blocks:
            answer = block(answer, groups, question, question_mask)
        return answer[:, 0]

