"""GroupViT image encoder: a ViT whose stages group image tokens into fewer, larger segments."""
import math
from typing import NamedTuple, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as checkpoint
from timm.layers import to_2tuple, trunc_normal_

from ..builder import MODELS
from .grouping import GroupingBlock
from ..layers import AttnBlock, MixerMlp, init_vit_weights


class StageOutput(NamedTuple):
    """What one stage hands on: tokens for the next stage and what the grouping produced."""
    x: torch.Tensor                            # [B, L_out, C_out] tokens (segments after a grouping block)
    group_token: Optional[torch.Tensor]        # [B, S, C] this stage's group tokens after its blocks
    attn_dict: Optional[dict]                  # {'hard', 'soft'}: [B, 1, S_out, L] assignment, when asked
    centers: Optional[torch.Tensor] = None     # [B, S_out, C] group centres before assignment


class PatchEmbed(nn.Module):
    """Non-overlapping patch embedding: x [B, 3, H, W] -> ([B, H/p * W/p, C], (H/p, W/p))."""

    def __init__(self, img_size=224, kernel_size=16, stride=16, padding=0, in_chans=3, embed_dim=384,
                 norm_layer=None):
        super().__init__()
        img_size, kernel_size, stride, padding = map(to_2tuple, (img_size, kernel_size, stride, padding))
        self.img_size = img_size
        self.patches_resolution = tuple(
            (img_size[i] + 2 * padding[i] - kernel_size[i]) // stride[i] + 1 for i in (0, 1))
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)
        self.norm = norm_layer(embed_dim) if norm_layer is not None else None

    @property
    def num_patches(self):
        return self.patches_resolution[0] * self.patches_resolution[1]

    def tokens(self, x):
        return self.proj(x)

    def forward(self, x):
        x = self.tokens(x)
        hw_shape = x.shape[2:]
        x = x.flatten(2).transpose(1, 2)
        if self.norm is not None:
            x = self.norm(x)
        return x, hw_shape


class ConvStemEmbed(PatchEmbed):
    """Patch embedding preceded by stride-2 3x3 convolutions (a small stem for tiny models and images)."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=384, norm_layer=None, stem_width=32):
        num_convs = int(math.log2(patch_size)) - 1
        super().__init__(img_size, kernel_size=2, stride=2, in_chans=stem_width * 2 ** max(num_convs - 1, 0),
                         embed_dim=embed_dim, norm_layer=norm_layer)
        self.patches_resolution = tuple(s // patch_size for s in to_2tuple(img_size))
        layers, width = [], in_chans
        for i in range(num_convs):
            out = stem_width * 2 ** i
            layers += [nn.Conv2d(width, out, 3, stride=2, padding=1), nn.BatchNorm2d(out), nn.GELU()]
            width = out
        self.stem = nn.Sequential(*layers)

    def tokens(self, x):
        return self.proj(self.stem(x))


def interpolate_pos_embed(pos_embed: torch.Tensor, hw: tuple) -> torch.Tensor:
    """pos_embed: [1, N, C] on a square grid -> [1, H*W, C] resized bicubically to `hw`."""
    side = int(math.sqrt(pos_embed.shape[1]))
    if tuple(hw) == (side, side):
        return pos_embed
    grid = pos_embed.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(hw), mode='bicubic', align_corners=False)
    return grid.permute(0, 2, 3, 1).reshape(1, -1, pos_embed.shape[-1])


def sincos_pos_embed(h, w, dim, temperature=10000.):
    """Fixed 2-D sine-cosine position embedding -> [1, h*w, dim]."""
    if dim % 4:
        raise ValueError(f'embed_dim must be divisible by 4 for the fourier position embedding, got {dim}')
    grid_w, grid_h = torch.meshgrid(torch.arange(w, dtype=torch.float32), torch.arange(h, dtype=torch.float32),
                                    indexing='ij')
    omega = 1. / temperature ** (torch.arange(dim // 4, dtype=torch.float32) / (dim // 4))
    out_w = grid_w.flatten()[:, None] * omega[None]
    out_h = grid_h.flatten()[:, None] * omega[None]
    return torch.cat([out_w.sin(), out_w.cos(), out_h.sin(), out_h.cos()], dim=1)[None]


class GroupingLayer(nn.Module):
    """One stage: transformer blocks over [image tokens ; group tokens], then (optionally) a grouping block."""

    def __init__(self, dim, num_input_token, depth, num_heads, num_group_token, mlp_ratio=4., qkv_bias=True,
                 qk_scale=None, drop=0., attn_drop=0., drop_path=0., norm_layer=nn.LayerNorm, downsample=None,
                 use_checkpoint=False, group_projector=None, zero_init_group_token=False, fused_attn=False):
        super().__init__()
        self.dim = dim
        self.input_length = num_input_token
        self.depth = depth
        self.use_checkpoint = use_checkpoint
        self.num_group_token = num_group_token
        if num_group_token > 0:
            self.group_token = nn.Parameter(torch.zeros(1, num_group_token, dim))
            if not zero_init_group_token:
                trunc_normal_(self.group_token, std=.02)
        else:
            self.group_token = None
        drop_path = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.ModuleList([
            AttnBlock(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale, drop=drop,
                      attn_drop=attn_drop, drop_path=drop_path[i], norm_layer=norm_layer, fused_attn=fused_attn)
            for i in range(depth)])
        self.downsample = downsample
        self.group_projector = group_projector

    @property
    def with_group_token(self):
        return self.group_token is not None

    def run_blocks(self, x, prev_group_token=None):
        """x: [B, L, C]; prev_group_token: [B, S_prev, C_prev] -> (image tokens [B, L, C], group tokens [B, S, C]
        or None) after the stage's transformer blocks."""
        group_token = None
        if self.with_group_token:
            group_token = self.group_token.expand(x.size(0), -1, -1)
            if self.group_projector is not None:
                group_token = group_token + self.group_projector(prev_group_token)
            tokens = torch.cat([x, group_token], dim=1)
        else:
            tokens = x
        for blk in self.blocks:
            tokens = checkpoint.checkpoint(blk, tokens, use_reentrant=False) if self.use_checkpoint else blk(tokens)
        if self.with_group_token:
            return tokens[:, :-self.num_group_token], tokens[:, -self.num_group_token:]
        return tokens, None

    def forward(self, x, prev_group_token=None, return_attn=False) -> StageOutput:
        """x: [B, L, C]; prev_group_token: [B, S_prev, C_prev] from the previous stage."""
        out, group_token = self.run_blocks(x, prev_group_token)
        if self.downsample is None:
            return StageOutput(out, group_token, None)
        out, attn_dict, centers = self.downsample(out, group_token, return_attn=return_attn)
        return StageOutput(out, group_token, attn_dict, centers)


@MODELS.register_module()
class GroupViT(nn.Module):
    """GroupViT image encoder (Xu et al., CVPR 2022). Arguments mirror `model.img_encoder` in the configs.

    stem: 'patch' (the published 16x16 patch embedding) or 'conv' (stride-2 convolutions, for tiny models).
    fused_attn: attention through `F.scaled_dot_product_attention` (faster, not bit-identical to the published
        code; the default reproduces its outputs bit for bit on the same device).
    gumbel: Gumbel noise on the training-time assignment; None (published) means exactly when hard_assignment.
    gumbel_scale: multiplies that noise (1 = published).
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=0, embed_dim=384,
                 embed_factors=(1, 1, 1), depths=(6, 3, 3), num_heads=(6, 6, 6), num_group_tokens=(64, 8, 0),
                 num_output_groups=(64, 8), hard_assignment=True, mlp_ratio=4., qkv_bias=True, qk_scale=None,
                 drop_rate=0., attn_drop_rate=0., drop_path_rate=0.1, patch_norm=True, use_checkpoint=False,
                 pos_embed_type='simple', freeze_patch_embed=False, gumbel_tau=1., stem='patch', fused_attn=False,
                 gumbel=None, gumbel_scale=1.):
        super().__init__()
        if not len(embed_factors) == len(depths) == len(num_group_tokens) == len(num_heads):
            raise ValueError('embed_factors, depths, num_group_tokens and num_heads need one entry per stage')
        if pos_embed_type not in ('simple', 'fourier'):
            raise ValueError(f"pos_embed_type must be 'simple' or 'fourier', got {pos_embed_type!r}")
        self.num_layers = len(depths)
        self.embed_dim = embed_dim
        self.patch_size = patch_size
        self.num_features = int(embed_dim * embed_factors[-1])
        self.num_group_tokens = list(num_group_tokens)
        self.num_output_groups = list(num_output_groups)
        self.pos_embed_type = pos_embed_type
        norm_layer = nn.LayerNorm
        patch_norm_layer = norm_layer if patch_norm else None
        if stem == 'patch':
            self.patch_embed = PatchEmbed(img_size, patch_size, patch_size, 0, in_chans, embed_dim, patch_norm_layer)
        elif stem == 'conv':
            self.patch_embed = ConvStemEmbed(img_size, patch_size, in_chans, embed_dim, patch_norm_layer)
        else:
            raise ValueError(f"stem must be 'patch' or 'conv', got {stem!r}")
        self.avgpool = nn.AdaptiveAvgPool1d(1)
        if pos_embed_type == 'simple':
            self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
            trunc_normal_(self.pos_embed, std=.02)
        else:
            self.pos_embed = nn.Parameter(sincos_pos_embed(*self.patch_embed.patches_resolution, embed_dim),
                                          requires_grad=False)
        if freeze_patch_embed:
            self.patch_embed.requires_grad_(False)
            self.pos_embed.requires_grad = False
        self.pos_drop = nn.Dropout(p=drop_rate)

        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, sum(depths))]
        num_input_token = self.patch_embed.num_patches
        self.layers = nn.ModuleList()
        for i in range(self.num_layers):
            dim = int(embed_dim * embed_factors[i])
            downsample = None
            if i < self.num_layers - 1:
                out_dim = embed_dim * embed_factors[i + 1]
                downsample = GroupingBlock(
                    dim=dim, out_dim=out_dim, num_heads=num_heads[i], num_group_token=num_group_tokens[i],
                    num_output_group=num_output_groups[i], norm_layer=norm_layer, hard=hard_assignment,
                    gumbel=hard_assignment if gumbel is None else gumbel, gumbel_tau=gumbel_tau,
                    gumbel_scale=gumbel_scale, fused_attn=fused_attn)
            group_projector = None
            if i > 0 and num_group_tokens[i] > 0:
                prev_dim = int(embed_dim * embed_factors[i - 1])
                group_projector = nn.Sequential(
                    norm_layer(prev_dim), MixerMlp(num_group_tokens[i - 1], prev_dim // 2, num_group_tokens[i]))
                if dim != prev_dim:
                    group_projector = nn.Sequential(group_projector, norm_layer(prev_dim),
                                                    nn.Linear(prev_dim, dim, bias=False))
            self.layers.append(self.build_layer(
                dim=dim, num_input_token=num_input_token, depth=depths[i], num_heads=num_heads[i],
                num_group_token=num_group_tokens[i], mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                drop=drop_rate, attn_drop=attn_drop_rate, drop_path=dpr[sum(depths[:i]):sum(depths[:i + 1])],
                norm_layer=norm_layer, downsample=downsample, use_checkpoint=use_checkpoint,
                group_projector=group_projector, zero_init_group_token=group_projector is not None,
                fused_attn=fused_attn))
            if i < self.num_layers - 1:
                num_input_token = num_output_groups[i]
        self.norm = norm_layer(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        self.apply(init_vit_weights)

    def build_layer(self, **kwargs) -> GroupingLayer:
        """One stage from GroupingLayer's arguments (an encoder with other stages overrides this)."""
        return GroupingLayer(**kwargs)

    @property
    def width(self):
        return self.num_features

    def get_pos_embed(self, hw):
        return interpolate_pos_embed(self.pos_embed, hw)

    def forward_features(self, x, return_attn=False):
        """x: [B, 3, H, W] -> (tokens [B, G, C] after the final norm, [StageOutput per stage])"""
        x, hw_shape = self.patch_embed(x)
        x = self.pos_drop(x + self.get_pos_embed(hw_shape))
        group_token, stages = None, []
        for layer in self.layers:
            stage = layer(x, group_token, return_attn=return_attn)
            x, group_token = stage.x, stage.group_token
            stages.append(stage)
        return self.norm(x), stages

    def pool(self, x):
        """x: [B, G, C] -> [B, C'] (mean over groups, then the head)."""
        return self.head(self.avgpool(x.transpose(1, 2)).flatten(1))

    def forward(self, x, *, return_feat=False, return_attn=False, as_dict=False):
        """x: [B, 3, H, W] -> dict (as_dict) with 'x' [B, C], 'feat' [B, G, C] (return_feat),
        'attn_dicts' (return_attn: per stage {'hard','soft'}: [B, 1, G, HW]; None for the last)."""
        tokens, stages = self.forward_features(x, return_attn=return_attn)
        outs = {'x': self.pool(tokens)}
        if return_feat:
            outs['feat'] = tokens
        if return_attn:
            outs['attn_dicts'] = [s.attn_dict for s in stages]
        return outs if as_dict else tuple(outs.values()) if len(outs) > 1 else outs['x']
