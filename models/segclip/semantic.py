"""SegCLIP's semantic layer: learnable centers gather the patch tokens (hard assignment), and the reconstruction of
patch tokens from the centers used by the MAE branch. Module and parameter names are those of the official code
(`semantic_layer2.*`, `reconstruct_layer2.*`) so that `segclip.bin` loads as it is."""
from collections import OrderedDict
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Mlp
from ..text_transformer import QuickGELU

GUMBEL_TAU = 0.9


def hard_center_assignment(logits: torch.Tensor, gumbel: bool, tau: float = GUMBEL_TAU) -> torch.Tensor:
    """logits: [B, G, L] -> one-hot over the G centers (dim 1) with straight-through gradients.

    With `gumbel` (training) the soft assignment is softmax((logits + Gumbel noise) / tau), the noise drawn by
    torch.distributions.Gumbel in the logits' dtype as the official code draws it; without, softmax(logits)."""
    if gumbel:
        zero, one = torch.zeros((), dtype=logits.dtype, device=logits.device), torch.ones((), dtype=logits.dtype,
                                                                                           device=logits.device)
        noise = torch.distributions.gumbel.Gumbel(zero, one).sample(logits.shape)
        y_soft = ((logits + noise) / tau).softmax(1)
    else:
        y_soft = logits.softmax(1)
    index = y_soft.max(1, keepdim=True)[1]
    y_hard = torch.zeros_like(logits, memory_format=torch.legacy_contiguous_format).scatter_(1, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


class CenterAttentionBlock(nn.Module):
    """centers += MHA(ln_x(centers), ln_k(keys)); centers += MLP(ln_2(centers)) (QuickGELU), CLIP's layout."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_x = nn.LayerNorm(width)
        self.ln_k = nn.LayerNorm(width)
        self.mlp = nn.Sequential(OrderedDict([('c_fc', nn.Linear(width, width * 4)), ('gelu', QuickGELU()),
                                              ('c_proj', nn.Linear(width * 4, width))]))
        self.ln_2 = nn.LayerNorm(width)

    def forward(self, centers: torch.Tensor, keys: torch.Tensor, per_sample: bool) -> torch.Tensor:
        """centers: [B, G, C]; keys: [B, S, C] -> [B, G, C].

        per_sample False is the published quirk: the official code hands the attention `[B, S, C]` keys where
        `[S, B, C]` is expected, which torch 1.8 read as the flattened batch, so sample b attended to the tokens
        s * B + b of `keys.reshape(B * S, C)` (exact for B = 1)."""
        B, S, C = keys.shape
        q = centers.transpose(0, 1)

        def seq_first(k):
            # published quirk (per_sample False): [B, S, C] keys read as a sequence-first [S, B, C] tensor
            return k.transpose(0, 1) if per_sample else k.reshape(S, B, C)
        # ln_k is applied twice, as published: two key tensors take the attention's three-projection path
        q = q + self.attn(self.ln_x(q), seq_first(self.ln_k(keys)), seq_first(self.ln_k(keys)),
                          need_weights=False)[0]
        q = q + self.mlp(self.ln_2(q))
        return q.transpose(0, 1)


class CenterAssignment(NamedTuple):
    centers: torch.Tensor  # [B, G, C] the semantic layer's output tokens
    hard: torch.Tensor     # [B, G, L] one-hot over G (straight-through), Gumbel noise in training
    soft: torch.Tensor     # [B, G, L] softmax over G of the center-patch logits


class SemanticCenters(nn.Module):
    """G learnable centers attend to the patches (2 cross-attention blocks), then every patch is hard-assigned to one
    center by q . k (no 1/sqrt(d)), softmax over the centers; a center's output is
    QuickGELU(MLP(LN(q + mean of its patches' values))). k and v are grouped 1x1 convolutions (one group per head,
    no bias) of the normalised patches, k layer-normalised."""

    def __init__(self, width: int, num_centers: int, heads: int, cross_layers: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.semantic_center = nn.Parameter(torch.empty(num_centers, width))
        nn.init.trunc_normal_(self.semantic_center, std=.02, a=-2., b=2.)
        self.cross_att = nn.Sequential(OrderedDict(
            [(str(i), CenterAttentionBlock(width, heads)) for i in range(cross_layers)]))
        self.cross_ln = nn.LayerNorm(width)
        self.k_conv = nn.Conv1d(width, width, kernel_size=1, groups=heads, bias=False)
        self.k_ln = nn.LayerNorm(width)
        self.v_conv = nn.Conv1d(width, width, kernel_size=1, groups=heads, bias=False)
        self.proj_o = nn.Sequential(OrderedDict([('ln', nn.LayerNorm(width)), ('mlp', Mlp(width, 4 * width, width)),
                                                 ('act', QuickGELU())]))

    def forward(self, x: torch.Tensor, gumbel: bool, per_sample: bool) -> CenterAssignment:
        """x: [B, L, C] patch tokens -> CenterAssignment."""
        normed = self.norm(x).permute(0, 2, 1)  # [B, C, L]
        q = self.semantic_center.to(x.dtype).unsqueeze(0).repeat(x.shape[0], 1, 1)
        for block in self.cross_att:
            q = block(q, torch.cat([q, x], dim=1), per_sample)
        q = self.cross_ln(q)
        k = self.k_ln(self.k_conv(normed).permute(0, 2, 1))  # [B, L, C]
        v = self.v_conv(normed).permute(0, 2, 1)
        logits = torch.einsum('bgc,blc->bgl', q, k)
        hard = hard_center_assignment(logits, gumbel)
        soft = F.softmax(logits, dim=1)
        out = torch.einsum('bgl,blc->bgc', hard, v)
        out = out / torch.clamp_min(hard.sum(dim=-1, keepdim=True), 1.0)
        return CenterAssignment(self.proj_o(q + out), hard, soft)


class ReconstructFromCenters(nn.Module):
    """MAE branch: patch tokens rebuilt from the centers, QuickGELU(a_fc(assignment^T) @ centers)."""

    def __init__(self, num_centers: int):
        super().__init__()
        self.rec_proj_a = nn.Sequential(OrderedDict([('a_fc', nn.Linear(num_centers, num_centers))]))
        self.proj_o = nn.Sequential(OrderedDict([('act_a', QuickGELU())]))

    def forward(self, centers: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
        """centers: [B, G, C]; assignment: [B, G, L] -> [B, L, C]."""
        weights = self.rec_proj_a(assignment.permute(0, 2, 1).contiguous()).to(centers.dtype)  # [B, L, G]
        return self.proj_o(torch.einsum('bgc,blg->blc', centers, weights))
