"""The four ways training-free methods run CLIP's last image block (x: [L, B, C] tokens, class token first).

q, k, v come from `in_proj(ln_1(x))` with its bias, split into heads of C / heads channels; scale = head_dim^-0.5.
The arithmetic follows the published code step for step (bmm, then the scale; softmax over the last axis), so the
same weights give the same bits:
- MaskCLIP (ClearCLIP's `model_type='MaskCLIP'`, `ignore_residual=False`): y = x + out_proj(v); y + mlp(ln_2(y))
- SCLIP:     y = x + out_proj((softmax(q q^T s) + softmax(k k^T s)) v); y + mlp(ln_2(y))
- ClearCLIP: out_proj(softmax(q q^T s) v)                     (no residual, no FFN)
- NACLIP:    out_proj(softmax(k k^T s + omega) v)             (no residual, no FFN; omega: gaussian_neighbourhood)
"""
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


def split_heads(attn: nn.MultiheadAttention, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x: [L, B, C] (already ln_1) -> q, k, v: [B * heads, L, C / heads]."""
    L, B, C = x.shape
    head_dim = C // attn.num_heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    return tuple(t.contiguous().view(L, B * attn.num_heads, head_dim).transpose(0, 1) for t in (q, k, v))


def merge_heads(attn: nn.MultiheadAttention, heads: torch.Tensor, L: int, B: int) -> torch.Tensor:
    """heads: [B * heads, L, head_dim] -> out_proj of the concatenated heads: [L, B, C]."""
    C = heads.shape[-1] * attn.num_heads
    return attn.out_proj(heads.transpose(0, 1).contiguous().view(L, B, C))


def head_scale(attn: nn.MultiheadAttention) -> float:
    return (attn.embed_dim // attn.num_heads) ** -0.5


def maskclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: [L, B, C] -> [L, B, C]: every token attends only to itself (the value path), then residual and FFN."""
    L, B, _ = x.shape
    _, _, v = split_heads(block.attn, block.ln_1(x))
    y = x + merge_heads(block.attn, v, L, B)
    return y + block.mlp(block.ln_2(y))


def sclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: [L, B, C] -> [L, B, C]: correlative self-attention (q-q plus k-k), then residual and FFN."""
    L, B, _ = x.shape
    q, k, v = split_heads(block.attn, block.ln_1(x))
    scale = head_scale(block.attn)
    weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * scale, dim=-1) + \
        F.softmax(torch.bmm(k, k.transpose(1, 2)) * scale, dim=-1)
    y = x + merge_heads(block.attn, torch.bmm(weights, v), L, B)
    return y + block.mlp(block.ln_2(y))


def clearclip_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """x: [L, B, C] -> [L, B, C]: q-q self-attention output alone (no residual, no FFN)."""
    L, B, _ = x.shape
    q, _, v = split_heads(block.attn, block.ln_1(x))
    weights = F.softmax(torch.bmm(q, q.transpose(1, 2)) * head_scale(block.attn), dim=-1)
    return merge_heads(block.attn, torch.bmm(weights, v), L, B)


def naclip_block(block: nn.Module, x: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """x: [L, B, C]; omega: [L, L] -> [L, B, C]: k-k attention plus the neighbourhood bias (no residual, no FFN)."""
    L, B, _ = x.shape
    _, k, v = split_heads(block.attn, block.ln_1(x))
    weights = torch.bmm(k, k.transpose(1, 2)) * head_scale(block.attn)
    weights = F.softmax(weights + omega.unsqueeze(0), dim=-1)
    return merge_heads(block.attn, torch.bmm(weights, v), L, B)


def gaussian_window(rows: int, cols: int, std: float) -> torch.Tensor:
    """-> [rows, cols] float32: exp(-(dr^2 + dc^2) / (2 std^2)) around the centre, computed as NACLIP does
    (offsets from linspace, scaled by 1 / (std sqrt 2), in float32)."""
    constant = 1 / (std * math.sqrt(2))
    axes = []
    for n in (rows, cols):
        start = -(n - 1) / 2.0
        axes.append(torch.linspace(start * constant, (start + (n - 1)) * constant, steps=n, dtype=torch.float))
    return torch.exp(-(torch.stack(torch.meshgrid(*axes, indexing='ij')) ** 2).sum(0))


def gaussian_neighbourhood(grid: Tuple[int, int], std: float) -> torch.Tensor:
    """grid (h, w) -> omega [1 + h*w, 1 + h*w] float32: 0 in the class token's row and column; between patches
    (r, c) and (r', c'): exp(-((r - r')^2 + (c - c')^2) / (2 std^2))."""
    h, w = grid
    window = gaussian_window(2 * h - 1, 2 * w - 1, std)
    rows, cols = torch.arange(h).repeat_interleave(w), torch.arange(w).repeat(h)
    patches = window[(rows[None] - rows[:, None]) + h - 1, (cols[None] - cols[:, None]) + w - 1]
    omega = torch.zeros(1 + h * w, 1 + h * w)
    omega[1:, 1:] = patches
    return omega
