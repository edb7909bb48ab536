"""TCL's encoders around one OpenAI CLIP (models/clip): the frozen image and text encoders, and the masker (its own
copy of CLIP's last blocks, the decoder, LayerNorm + projection, the similarity-to-mask head).

The MaskCLIP-style last block: with `ignore_last_attn`, the last block's attention may only look at each token
itself (a diagonal mask), so every patch keeps its own value projection instead of a mix over the image.
"""
import copy
from collections import OrderedDict
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
from einops import rearrange

from utils.distributed import all_gather_with_grad, get_rank, get_world_size

from ..builder import MODELS
from ..clip import CLIP, VisionTransformer
from .modules import GDecoder, LNProjection, Sim2Mask, normalize


def diagonal_attention_mask(length: int, like: torch.Tensor) -> torch.Tensor:
    """[length, length] additive mask: 0 on the diagonal, -inf elsewhere (each token attends to itself only)."""
    mask = torch.full((length, length), float('-inf'), dtype=like.dtype, device=like.device)
    return mask.fill_diagonal_(0)


def run_blocks(blocks, x: torch.Tensor, diagonal_last: bool) -> torch.Tensor:
    """x: [L, B, C] through `blocks` (CLIP residual attention blocks); the last one MaskCLIP-style when asked."""
    blocks = list(blocks)
    for i, block in enumerate(blocks):
        last = i == len(blocks) - 1
        x = block(x, diagonal_attention_mask(x.shape[0], x) if last and diagonal_last else None)
    return x


def patch_map(tokens: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
    """tokens: [B, 1 + h*w, C] (class token first) -> patch feature map [B, C, h, w]."""
    return rearrange(tokens[:, 1:], 'B (H W) C -> B C H W', H=grid[0], W=grid[1])


class CLIPImageEncoder(nn.Module):
    """CLIP's image encoder as TCL holds it: the ViT without its ln_post and proj (`clip_visual`), which move to
    `clip_proj` (published names: clip_image_encoder.clip_visual.*, clip_image_encoder.clip_proj.{ln,proj}).

    visual: a models.clip VisionTransformer, taken over (its ln_post and proj are moved out of it).
    """

    def __init__(self, visual: VisionTransformer):
        super().__init__()
        self.clip_proj = LNProjection(visual.ln_post, visual.proj)
        del visual.ln_post, visual.proj  # they live in clip_proj, as in the published state dict
        visual.pos_embed_resize = 'size'  # TCL's interpolate_pos_emb: bicubic to size=(h, w)
        self.clip_visual = visual
        self.patch_size = visual.patch_size

    @property
    def blocks(self):
        return self.clip_visual.transformer.resblocks

    def tokens_after(self, image: torch.Tensor, num_blocks: int) -> torch.Tensor:
        """image: [B, 3, H, W] -> [1 + h*w, B, C]: the output of the first `num_blocks` blocks."""
        return run_blocks(self.blocks[:num_blocks], self.clip_visual.embed(image), diagonal_last=False)

    def dense(self, image: torch.Tensor, num_blocks: int, ignore_last_attn: bool
              ) -> Tuple[torch.Tensor, torch.Tensor]:
        """image: [B, 3, H, W] -> (patch features [B, C, h, w] of the whole ViT, its last block MaskCLIP-style when
        ignore_last_attn; the tokens [1 + h*w, B, C] after the first `num_blocks` blocks)."""
        grid = self.clip_visual.patch_grid(image)
        early = self.tokens_after(image, num_blocks)
        x = run_blocks(self.blocks[num_blocks:], early, ignore_last_attn)
        return patch_map(x.permute(1, 0, 2), grid), early

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> CLIP's image embedding [B, C_out] (class token, every block as trained)."""
        x = run_blocks(self.blocks, self.clip_visual.embed(image), diagonal_last=False)
        return self.clip_proj(x[0])


class CLIPTextEncoder(nn.Module):
    """CLIP's text encoder (published names: clip_text_encoder.{token_embedding, positional_embedding, transformer,
    ln_final, text_projection}); takes them over from a models.clip CLIP."""

    def __init__(self, clip: CLIP):
        super().__init__()
        self.context_length = clip.context_length
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer('attn_mask', clip.attn_mask, persistent=False)

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        """text: [B, context_length] token ids (end-of-text has the largest id) -> [B, C_out] (unnormalised)."""
        dtype = self.token_embedding.weight.dtype
        x = self.token_embedding(text).to(dtype) + self.positional_embedding.to(dtype)
        x = self.transformer(x.permute(1, 0, 2), self.attn_mask.to(x.dtype)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0], device=x.device), text.argmax(dim=-1)] @ self.text_projection


class BlockStack(nn.Module):
    """CLIP blocks under their original indices (published: backbone.transformer.resblocks.11.* for block 11)."""

    def __init__(self, blocks: Dict[int, nn.Module]):
        super().__init__()
        self.resblocks = nn.Sequential(OrderedDict((str(i), block) for i, block in blocks.items()))


class MaskerBackbone(nn.Module):
    """The masker's own trainable copy of CLIP's blocks `first..` (ln_post and proj are not part of it)."""

    def __init__(self, image_encoder: CLIPImageEncoder, first: int):
        super().__init__()
        blocks = image_encoder.blocks
        self.transformer = BlockStack({i: copy.deepcopy(blocks[i]) for i in range(first, len(blocks))})

    def forward(self, x: torch.Tensor, ignore_last_attn: bool) -> torch.Tensor:
        """x: [1 + h*w, B, C] (CLIP's tokens before block `first`) -> [B, 1 + h*w, C]."""
        return run_blocks(self.transformer.resblocks, x, ignore_last_attn).permute(1, 0, 2)


class MaskerImageEncoder(nn.Module):
    """Backbone copy -> patch map -> decoder (upsampling) -> LayerNorm + projection: [B, C_out, h', w']."""

    def __init__(self, backbone: MaskerBackbone, decoder: GDecoder, image_proj: LNProjection, patch_size: int,
                 ignore_last_attn: bool):
        super().__init__()
        self.backbone = backbone
        self.decoder = nn.Sequential(OrderedDict([('decoder', decoder), ('image_proj', image_proj)]))
        self.patch_size = patch_size
        self.ignore_last_attn = ignore_last_attn

    def forward(self, image_feat: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """image_feat: [1 + h*w, B, C] CLIP tokens; grid: (h, w) -> dense image embedding [B, C_out, h', w']."""
        return self.decoder(patch_map(self.backbone(image_feat, self.ignore_last_attn), grid))


@MODELS.register_module()
class Masker(nn.Module):
    """Text-grounded masks: cosine similarity of the masker's dense image embedding and text embeddings, turned into
    masks by Sim2Mask.

    backbone, image_proj: copies of CLIP's modules (taken over); decoder: GDecoder arguments (`type: GDecoder`; the
    width is the backbone's); sim2mask: Sim2Mask arguments; ignore_last_attn: MaskCLIP-style last block.
    """

    def __init__(self, backbone: MaskerBackbone, image_proj: LNProjection, width: int, patch_size: int,
                 decoder: Optional[dict] = None, sim2mask: Optional[dict] = None, ignore_last_attn: bool = True):
        super().__init__()
        decoder = dict(decoder or {})
        kind = decoder.pop('type', 'GDecoder')
        if kind != 'GDecoder':
            raise ValueError(f"model.masker.decoder.type must be 'GDecoder', got {kind!r}")
        self.ignore_last_attn = ignore_last_attn
        self.image_encoder = MaskerImageEncoder(backbone, GDecoder(width, **decoder), image_proj, patch_size,
                                                ignore_last_attn)
        try:
            self.sim2mask = Sim2Mask(**(sim2mask or {}))
        except TypeError as e:
            raise ValueError(f'model.masker.sim2mask: {e}') from None

    def similarity(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """image_emb: [B, C, h', w']; text_emb: [N, C] -> cosine similarity map [B, N, h', w']."""
        return torch.einsum('bchw,nc->bnhw', normalize(image_emb, 1), text_emb)

    def forward(self, image_feat: torch.Tensor, grid: Tuple[int, int], text_emb: torch.Tensor
                ) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
        """Training. image_feat: [1 + h*w, B, C] CLIP tokens; text_emb: [B, C] this rank's captions ->
        ({'pos': straight-through hard mask of each image's own caption [B, 1, h', w'], 'soft_pos' [B, 1, h', w'],
        'soft_neg': the other captions' soft masks [B, B*world - 1, h', w'], 'soft_all' [B, B*world, h', w']},
        dense image embedding [B, C, h', w'] (unnormalised))."""
        image_emb = self.image_encoder(image_feat, grid)
        B, world = image_emb.shape[0], get_world_size()
        all_text = all_gather_with_grad(normalize(text_emb, -1))
        hard, soft = self.sim2mask(self.similarity(image_emb, all_text))
        rows = torch.arange(B, device=image_emb.device)
        own = rows + B * get_rank()
        others = torch.ones(B, B * world, dtype=torch.bool, device=image_emb.device)
        others[rows, own] = False
        h, w = soft.shape[-2:]
        masks = {'pos': hard[rows, own].unsqueeze(1), 'soft_pos': soft[rows, own].unsqueeze(1),
                 'soft_neg': soft.masked_select(others[..., None, None]).view(B, B * world - 1, h, w),
                 'soft_all': soft}
        return masks, image_emb

    @torch.no_grad()
    def forward_seg(self, image_feat: torch.Tensor, grid: Tuple[int, int], text_emb: torch.Tensor
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Inference. text_emb: [N, C] -> (soft masks sigmoid(w cos + b) [B, N, h', w'], cos [B, N, h', w'])."""
        simmap = self.similarity(self.image_encoder(image_feat, grid), normalize(text_emb, -1))
        _, soft = self.sim2mask(simmap, deterministic=True)
        return soft, simmap
