"""SegCLIP's image tower on a CLIP ViT: CLIP's blocks 0..first_stage_layer-1 on the patch tokens (the class token is
dropped), the semantic layer (learnable centers), CLIP's remaining blocks on the centers; and the MAE branch
(reconstructed patch tokens, `layers_mae2`). `SegViT` replaces `clip.visual.transformer` and keeps the official
names (`layers0`, `semantic_layer2`, `layers2`, `layers_mae2`, `reconstruct_layer2`)."""
import math
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..clip import VisionTransformer
from ..text_transformer import ResidualAttentionBlock
from .semantic import CenterAssignment, ReconstructFromCenters, SemanticCenters

NUM_CENTERS = 8
CROSS_LAYERS = 2


def run_blocks(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """x: [B, L, C] through CLIP blocks (sequence-first inside, as published) -> [B, L, C]."""
    x = x.transpose(0, 1)
    for block in blocks:
        x = block(x, None)
    return x.transpose(0, 1)


def published_init(module: nn.Module) -> None:
    """The official model's last initialisation pass over its new modules: Linear weights N(0, 0.02), biases 0
    (attention in-projections keep torch's xavier init, LayerNorms 1 and 0, convolutions torch's default)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class SegViT(nn.Module):
    """`clip.visual.transformer` of SegCLIP. blocks: CLIP's image blocks (reused as they are, e.g. with OpenAI's
    weights); blocks[:first_stage_layer] become `layers0`, the rest `layers2`."""

    def __init__(self, blocks: List[ResidualAttentionBlock], width: int, heads: int, first_stage_layer: int):
        super().__init__()
        if not 0 < first_stage_layer < len(blocks):
            raise ValueError(f'first_stage_layer must be between 1 and {len(blocks) - 1} (the CLIP image tower has '
                             f'{len(blocks)} blocks), got {first_stage_layer}')
        self.layers0 = nn.Sequential(*blocks[:first_stage_layer])
        self.semantic_layer2 = SemanticCenters(width, NUM_CENTERS, heads, CROSS_LAYERS)
        self.layers2 = nn.Sequential(*blocks[first_stage_layer:])
        self.layers_mae2 = nn.Sequential(*[ResidualAttentionBlock(width, heads)
                                           for _ in range(len(blocks) - first_stage_layer)])
        self.reconstruct_layer2 = ReconstructFromCenters(NUM_CENTERS)
        for new in (self.semantic_layer2, self.layers_mae2, self.reconstruct_layer2):
            published_init(new)

    def centers(self, patches: torch.Tensor, gumbel: bool, per_sample: bool) -> CenterAssignment:
        """patches: [B, L, C] after ln_pre (class token dropped) -> centers [B, G, C] after `layers2`."""
        assignment = self.semantic_layer2(run_blocks(self.layers0, patches), gumbel, per_sample)
        return assignment._replace(centers=run_blocks(self.layers2, assignment.centers))

    def reconstructed_patches(self, patches: torch.Tensor, gumbel: bool, per_sample: bool) -> torch.Tensor:
        """MAE branch. patches: [B, K, C] the kept patch tokens -> [B, K, C] rebuilt from the centers, after
        `layers_mae2`."""
        assignment = self.semantic_layer2(run_blocks(self.layers0, patches), gumbel, per_sample)
        return run_blocks(self.layers_mae2, self.reconstruct_layer2(assignment.centers, assignment.hard))


def positional_embedding(visual: VisionTransformer, grid) -> torch.Tensor:
    """[1 + h*w, C] for a patch grid (h, w): CLIP's own on its native square grid, else its patch part resized
    bicubically to size (h, w) (align_corners False), as the official evaluation does."""
    pos = visual.positional_embedding
    n = math.isqrt(pos.shape[0] - 1)
    h, w = grid
    if (h, w) == (n, n):
        return pos
    patch = pos[1:].reshape(1, n, n, -1).permute(0, 3, 1, 2)
    patch = F.interpolate(patch, size=(h, w), mode='bicubic', align_corners=False)
    return torch.cat([pos[:1], patch.permute(0, 2, 3, 1).reshape(h * w, -1)])


def embed_tokens(visual: VisionTransformer, image: torch.Tensor) -> torch.Tensor:
    """image: [B, 3, H, W] -> [B, 1 + h*w, C]: conv1 patches after the class embedding, + positions, ln_pre."""
    grid = visual.patch_grid(image)
    x = visual.conv1(image.to(visual.conv1.weight.dtype)).flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype) + torch.zeros(x.shape[0], 1, x.shape[-1], dtype=x.dtype,
                                                            device=x.device)
    x = torch.cat([cls, x], dim=1) + positional_embedding(visual, grid).to(x.dtype)
    return visual.ln_pre(x)
