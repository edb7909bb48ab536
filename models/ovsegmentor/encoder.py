"""OVSegmentor's image encoder: a two-stage GroupViT (ViT-B width) initialised from a DINO ViT-B/16 checkpoint.

Differences from the GroupViT encoder of models/groupvit (all as in the published code):
- the position embedding is one 2-D table [num_patches, C] (DINO's without its class-token row), added as it is in
  training and resized bicubically in eval only;
- the grouping stages also return the one-head assignment's projected queries and keys (`'q'` [B, 1, G, C],
  `'k'` [B, 1, L, C] in the attention dicts), which the cross-image mask loss compares across images.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
from timm.layers import trunc_normal_

from ..builder import MODELS
from ..groupvit.encoder import GroupingLayer, GroupViT, StageOutput, interpolate_pos_embed

DINO_PRETRAINED = ('dino', )


class DinoCheckpointError(ValueError):
    """The DINO file does not fit the image encoder."""


class QueryKeyGroupingLayer(GroupingLayer):
    """A GroupViT stage whose attention dict also holds the assignment's queries (group centres) and keys (tokens)."""

    def forward(self, x, prev_group_token=None, return_attn=False) -> StageOutput:
        out, group_token = self.run_blocks(x, prev_group_token)
        if self.downsample is None:
            return StageOutput(out, group_token, None)
        new_x, attn_dict, centers = self.downsample(out, group_token, return_attn=return_attn)
        if return_attn:
            assign = self.downsample.assign
            attn_dict['q'] = assign._heads(assign.q_proj(centers))
            attn_dict['k'] = assign._heads(assign.k_proj(self.downsample.norm_x(out)))
        return StageOutput(new_x, group_token, attn_dict, centers)


def dino_to_encoder_keys(dino_keys, depths) -> Dict[str, Optional[str]]:
    """DINO ViT state-dict names -> encoder names (None: dropped). Blocks fill the stages in order: with depths
    [6, 6], blocks 0-5 become layers.0.blocks.0-5 and blocks 6-11 layers.1.blocks.0-5."""
    stage_of_block = [(stage, i) for stage, depth in enumerate(depths) for i in range(depth)]
    mapping = {}
    for key in dino_keys:
        if key == 'cls_token':
            mapping[key] = None
        elif key.startswith('blocks.'):
            index, rest = key[len('blocks.'):].split('.', 1)
            if int(index) >= len(stage_of_block):
                raise DinoCheckpointError(f'DINO block {index} has no place: the encoder has {len(stage_of_block)} '
                                          f'blocks (depths {list(depths)})')
            stage, block = stage_of_block[int(index)]
            mapping[key] = f'layers.{stage}.blocks.{block}.{rest}'
        else:
            mapping[key] = key
    return mapping


@MODELS.register_module()
class OVSegmentorGroupViT(GroupViT):
    """GroupViT with OVSegmentor's 2-D position table and DINO initialisation. Arguments mirror
    `model.img_encoder` of configs/ovsegmentor/*.yml; the GroupViT arguments are those of models/groupvit.

    imgnet_pretrained: 'dino' (published) or None (random initialisation).
    imgnet_pretrained_checkpoint: a local DINO ViT file (`dino_vitbase16_pretrain.pth`, a plain state dict, read
        weights-only), or None: random weights of the same shapes.
    fixed: freeze the parameters read from the DINO file.
    The published model runs DINO's 12-head ViT-B weights as 8 heads (`num_heads: [8, 8]`) and with LayerNorm eps
    1e-5 (DINO trained with 1e-6); both are kept, as the released weights were trained that way.
    """

    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=0, embed_dim=768, embed_factors=(1, 1),
                 depths=(6, 6), num_heads=(8, 8), num_group_tokens=(64, 0), num_output_groups=(8, ),
                 hard_assignment=True, mlp_ratio=4., qkv_bias=True, qk_scale=None, drop_rate=0., attn_drop_rate=0.,
                 drop_path_rate=0.1, patch_norm=False, use_checkpoint=False, pos_embed_type='simple',
                 freeze_patch_embed=False, gumbel_tau=1., fused_attn=False, imgnet_pretrained='dino',
                 imgnet_pretrained_checkpoint=None, fixed=False):
        if pos_embed_type != 'simple':
            raise ValueError(f"OVSegmentor's encoder has a learnt position table (pos_embed_type 'simple'), got "
                             f'{pos_embed_type!r}')
        if imgnet_pretrained not in (None, *DINO_PRETRAINED):
            raise ValueError(f"imgnet_pretrained must be 'dino' or null, got {imgnet_pretrained!r}")
        super().__init__(img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=num_classes,
                         embed_dim=embed_dim, embed_factors=embed_factors, depths=depths, num_heads=num_heads,
                         num_group_tokens=num_group_tokens, num_output_groups=num_output_groups,
                         hard_assignment=hard_assignment, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale,
                         drop_rate=drop_rate, attn_drop_rate=attn_drop_rate, drop_path_rate=drop_path_rate,
                         patch_norm=patch_norm, use_checkpoint=use_checkpoint, pos_embed_type='simple',
                         freeze_patch_embed=freeze_patch_embed, gumbel_tau=gumbel_tau, fused_attn=fused_attn)
        self.depths = list(depths)
        table = torch.zeros(self.patch_embed.num_patches, embed_dim)
        trunc_normal_(table, std=.02)
        self.pos_embed = nn.Parameter(table, requires_grad=not freeze_patch_embed)
        self.imgnet_pretrained = imgnet_pretrained
        self.loaded_from_dino = []
        if imgnet_pretrained is not None and imgnet_pretrained_checkpoint:
            self.loaded_from_dino = self.load_dino(imgnet_pretrained_checkpoint)
            if fixed:
                for name, param in self.named_parameters():
                    if name in self.loaded_from_dino:
                        param.requires_grad = False

    def build_layer(self, **kwargs) -> GroupingLayer:
        return QueryKeyGroupingLayer(**kwargs)

    def get_pos_embed(self, hw):
        """[1, H*W, C]: the table as it is in training (the published encoder takes only its training size), resized
        bicubically to the patch grid `hw` in eval."""
        table = self.pos_embed.unsqueeze(0)
        return table if self.training else interpolate_pos_embed(table, hw)

    def dino_state_dict(self, dino: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A DINO ViT state dict in this encoder's names: blocks to stages, `pos_embed[0, 1:]` as the 2-D table (resized
        bicubically when the patch grid differs), `cls_token` dropped."""
        from utils.checkpoint import resize_pos_embed
        mapping = dino_to_encoder_keys(dino, self.depths)
        out = {}
        for key, value in dino.items():
            name = mapping[key]
            if name is None:
                continue
            if name == 'pos_embed':
                value = value[0, 1:]
                if value.shape[0] != self.pos_embed.shape[0]:
                    value = resize_pos_embed(value[None], self.pos_embed.shape[0])[0]
            out[name] = value
        return out

    def load_dino(self, path: str):
        """Copy the DINO weights of `path` into the encoder; returns the names filled. Every DINO tensor must fit."""
        from utils.checkpoint import extract_state_dict, read_checkpoint
        weights = self.dino_state_dict(extract_state_dict(read_checkpoint(path), path))
        own = self.state_dict()
        problems = [f'no place for {k}' for k in weights if k not in own]
        problems += [f'{k}: file {tuple(v.shape)}, encoder {tuple(own[k].shape)}' for k, v in weights.items()
                     if k in own and v.shape != own[k].shape]
        if problems:
            raise DinoCheckpointError(f"{path} does not fit the image encoder: {'; '.join(problems[:5])}")
        self.load_state_dict(weights, strict=False)
        return sorted(weights)
