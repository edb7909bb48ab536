"""SegCLIP's masked-image reconstruction: random masking of the patch tokens, and the MAE decoder (`vis_mae_decoder`,
the official names) with its loss on the masked patches."""
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn as nn

from ..layers import AttnBlock

DECODER_DEPTH = 3
DECODER_HEADS = 8


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """images: [B, 3, H, W] (square, H a multiple of patch_size) -> [B, h*w, p*p*3] in (p, q, c) order."""
    B, _, H, W = images.shape
    if H != W or H % patch_size:
        raise ValueError(f'MAE targets need a square image of whole {patch_size}-pixel patches, got {H}x{W}')
    h = H // patch_size
    x = images.reshape(B, 3, h, patch_size, h, patch_size)
    return torch.einsum('nchpwq->nhwpqc', x).reshape(B, h * h, patch_size ** 2 * 3)


def sincos_positions(width: int, grid: int) -> np.ndarray:
    """MAE's fixed 2-D sine-cosine embedding [1 + grid*grid, width] (float64; row 0, the class token, zeros)."""
    omega = 1. / 10000 ** (np.arange(width // 4, dtype=np.float64) / (width / 4.))
    grid_w, grid_h = np.meshgrid(np.arange(grid, dtype=np.float32), np.arange(grid, dtype=np.float32))

    def one_axis(pos):
        out = np.einsum('m,d->md', pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    # the first half encodes the meshgrid's first array (columns), as MAE's code does
    emb = np.concatenate([one_axis(grid_w), one_axis(grid_h)], axis=1)
    return np.concatenate([np.zeros([1, width]), emb], axis=0)


class Masking(NamedTuple):
    kept: torch.Tensor         # [B, K, C] the kept tokens, class token first, then K - 1 patches in ids_restore order
    mask: torch.Tensor         # [B, 1 + L] float32: 1 masked, 0 kept (column 0, the class token, always kept)
    ids_restore: torch.Tensor  # [B, 1 + L] position of each token in [kept, masked]


def random_masking(tokens: torch.Tensor, mask_ratio: float) -> Masking:
    """tokens: [B, 1 + L, C] (class token first) -> the int((1 + L) * (1 - mask_ratio)) tokens of lowest
    `torch.rand(B, 1 + L)` noise (float32, the class token's set to -1 so that it is always kept), as published."""
    N, L, D = tokens.shape
    len_keep = int(L * (1 - mask_ratio))
    noise = torch.rand(N, L, device=tokens.device)
    noise[:, 0] = -1.
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :len_keep]
    kept = torch.gather(tokens, dim=1, index=ids_keep.unsqueeze(-1).repeat(1, 1, D))
    mask = torch.ones([N, L], device=tokens.device)
    mask[:, :len_keep] = 0
    return Masking(kept, torch.gather(mask, dim=1, index=ids_restore), ids_restore)


class MAEDecoder(nn.Module):
    """Linear to width // 2, mask tokens, fixed sin-cos positions, 3 pre-norm blocks (8 heads, MLP x4, GELU,
    LayerNorm eps 1e-6), a linear prediction of each patch's p*p*3 pixels."""

    def __init__(self, width: int, image_resolution: int, patch_size: int):
        super().__init__()
        decoder_width = width // 2
        grid = image_resolution // patch_size
        self.patch_size = patch_size
        self.decoder_embed = nn.Linear(width, decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_width))
        self.decoder_pos_embed = nn.Parameter(
            torch.from_numpy(sincos_positions(decoder_width, grid)).float().unsqueeze(0), requires_grad=False)
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.decoder_blocks = nn.ModuleList([AttnBlock(decoder_width, DECODER_HEADS, mlp_ratio=4., qkv_bias=True,
                                                       norm_layer=norm) for _ in range(DECODER_DEPTH)])
        self.decoder_norm = norm(decoder_width)
        self.decoder_pred = nn.Linear(decoder_width, patch_size ** 2 * 3)
        nn.init.normal_(self.mask_token, std=.02)
        # the official model's last pass re-initialises every Linear N(0, 0.02) (over MAE's xavier init)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def loss(self, images: torch.Tensor, hidden: torch.Tensor, masking: Masking) -> torch.Tensor:
        """images: [B, 3, H, W] the encoder's (normalised) input; hidden: [B, K, C] encoded kept tokens (class token
        first) -> mean over masked patches of the per-patch mean squared error."""
        x = self.decoder_embed(hidden)
        mask_tokens = self.mask_token.repeat(x.shape[0], masking.ids_restore.shape[1] - x.shape[1], 1)
        x = torch.cat([x, mask_tokens], dim=1)
        x = torch.gather(x, dim=1, index=masking.ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = x + self.decoder_pos_embed
        for block in self.decoder_blocks:
            x = block(x)
        pred = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        per_patch = ((pred - patchify(images, self.patch_size)) ** 2).mean(dim=-1)
        return (per_patch * masking.mask[:, 1:]).sum() / masking.mask[:, 1:].sum()
