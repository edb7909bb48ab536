"""Training-free open-vocabulary segmentation with a frozen OpenAI CLIP: MaskCLIP, SCLIP, ClearCLIP and NACLIP.

Each method changes only CLIP's last image block (see `last_block.py`); the patch tokens it outputs go through
ln_post and proj, are L2-normalised and dotted with unit text embeddings: a [Q, h/16, w/16] cosine map per crop,
resized bilinearly (align_corners False) to the crop. What happens at the original image size (softmax over the
query names, multi-name classes, thresholds, PAMR) is `segmentation/evaluation/training_free.py`; the class
attributes below are the per-method details of that rule, as each repository's segmentor has them.
"""
from typing import Dict, Tuple

import torch
import torch.nn.functional as F

from ..base import SegmentationMethod
from ..builder import MODELS
from ..clip import build_clip
from .last_block import clearclip_block, gaussian_neighbourhood, maskclip_block, naclip_block, sclip_block


class TrainingFreeCLIP(SegmentationMethod):
    """A frozen CLIP (`clip_model`: architecture name, mapping of CLIP arguments, or OpenAI file path) whose last image
    block a subclass replaces in `last_block`. Not trainable."""

    # published per-method details of the full-image rule (segmentation/evaluation/training_free.py)
    pad_crops_to_patch = False         # zero-pad each sliding window to a multiple of the patch size, then cut
    whole_image_via_input_size = False  # whole-image logits: patch grid -> input size -> original (else direct)
    renormalise_scores = False         # divide the stored class probabilities by their sum over classes

    def __init__(self, clip_model='ViT-B/16'):
        super().__init__()
        self.clip = build_clip(clip_model)
        self.patch_size = self.clip.visual.patch_size
        self.requires_grad_(False)

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """OpenAI's CLIP names (`visual.conv1.weight`, ...: OpenAI's file given as the checkpoint) -> this method's
        (`clip.visual.conv1.weight`, ...); the method's own checkpoints pass unchanged."""
        if any(name.startswith('clip.') for name in state_dict):
            return state_dict
        return {f'clip.{name}': value for name, value in state_dict.items()}

    @property
    def logit_scale(self) -> torch.Tensor:
        return self.clip.logit_scale

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> [B, C]: vanilla CLIP's embedding (all blocks unchanged), unnormalised."""
        return self.clip.encode_image(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """text: [B, L] -> [B, C], unnormalised."""
        return self.clip.encode_text(text)

    @torch.no_grad()
    def build_text_embedding(self, text: torch.Tensor) -> torch.Tensor:
        """text: [N, T, L] -> [N, C]: each prompt embedding L2-normalised, averaged over the T prompts, normalised."""
        text = text.to(self.clip.positional_embedding.device)
        N, T = text.shape[:2]
        prompts = self.encode_text(text.flatten(0, 1))
        prompts = prompts / prompts.norm(dim=-1, keepdim=True)
        mean = prompts.unflatten(0, (N, T)).mean(dim=1)
        return mean / mean.norm(dim=-1, keepdim=True)

    def last_block(self, block, x: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        """block: CLIP's last ResidualAttentionBlock; x: [1 + h*w, B, C] -> [1 + h*w, B, C]."""
        raise NotImplementedError

    def dense_features(self, img: torch.Tensor) -> torch.Tensor:
        """img: [B, 3, H, W] -> [B, h*w, D] patch embeddings (h, w = H // 16, W // 16), L2-normalised."""
        visual = self.clip.visual
        grid = visual.patch_grid(img)
        x = self.last_block(visual.transformer.resblocks[-1], visual.tokens_before_last_block(img), grid)
        features = visual.project(x.permute(1, 0, 2))[:, 1:]
        return features / features.norm(dim=-1, keepdim=True)

    def patch_logits(self, img: torch.Tensor, text_embedding: torch.Tensor) -> torch.Tensor:
        """img: [B, 3, H, W]; text_embedding: [Q, D] unit rows -> cosine maps [B, Q, H // 16, W // 16]."""
        h, w = self.clip.visual.patch_grid(img)
        logits = self.dense_features(img) @ text_embedding.to(img.dtype).T  # [B, h*w, Q]
        return logits.permute(0, 2, 1).reshape(img.shape[0], -1, h, w)

    def zero_shot_logits(self, img: torch.Tensor, text_embedding: torch.Tensor, with_bg: bool = False,
                         bg_thresh: float = 0.0) -> torch.Tensor:
        """img: [B, 3, H, W] normalised crop(s); text_embedding: [Q, D] -> [B, Q (+1), H, W] cosine maps, resized
        bilinearly to the crop. with_bg: a constant `bg_thresh` channel first (background wins where every name's
        cosine is below it)."""
        H, W = img.shape[-2:]
        pad = padding_to_multiple(H, W, self.patch_size) if self.pad_crops_to_patch else (0, 0, 0, 0)
        if any(pad):
            img = F.pad(img, pad)
        logits = F.interpolate(self.patch_logits(img, text_embedding), size=img.shape[-2:], mode='bilinear',
                               align_corners=False)
        if any(pad):
            left, _, top, _ = pad
            logits = logits[:, :, top:top + H, left:left + W]
        if with_bg:
            logits = torch.cat([torch.full_like(logits[:, :1], bg_thresh), logits], dim=1)
        return logits


def padding_to_multiple(H: int, W: int, multiple: int) -> Tuple[int, int, int, int]:
    """-> (left, right, top, bottom) zero padding that makes H and W multiples of `multiple`, split as evenly as
    possible with the extra pixel on the right / bottom (ClearCLIP's `compute_padsize`)."""
    horizontal, vertical = -W % multiple, -H % multiple
    return horizontal // 2, horizontal - horizontal // 2, vertical // 2, vertical - vertical // 2


@MODELS.register_module()
class MaskCLIP(TrainingFreeCLIP):
    """MaskCLIP (Zhou et al., ECCV 2022) as ClearCLIP's code runs it: the last block's attention is replaced by each
    token's own value, residual and FFN kept."""
    pad_crops_to_patch = True

    def last_block(self, block, x, grid):
        return maskclip_block(block, x)


@MODELS.register_module()
class SCLIP(TrainingFreeCLIP):
    """SCLIP (Wang et al., ECCV 2024): correlative self-attention (softmax(q q^T) + softmax(k k^T)) in the last
    block, residual and FFN kept."""

    def last_block(self, block, x, grid):
        return sclip_block(block, x)


@MODELS.register_module()
class ClearCLIP(TrainingFreeCLIP):
    """ClearCLIP (Lan et al., ECCV 2024): the last block's q-q self-attention output alone, without residual or FFN."""
    pad_crops_to_patch = True

    def last_block(self, block, x, grid):
        return clearclip_block(block, x)


@MODELS.register_module()
class NACLIP(TrainingFreeCLIP):
    """NACLIP (Hajimiri et al., WACV 2025): k-k attention plus a Gaussian neighbourhood bias (std `gaussian_std`
    patches), without residual or FFN."""
    whole_image_via_input_size = True
    renormalise_scores = True

    def __init__(self, clip_model='ViT-B/16', gaussian_std: float = 5.0):
        super().__init__(clip_model)
        if gaussian_std <= 0:
            raise ValueError(f'gaussian_std must be positive, got {gaussian_std}')
        self.gaussian_std = gaussian_std
        self._omega: Dict[Tuple[int, int], torch.Tensor] = {}

    def omega(self, grid: Tuple[int, int]) -> torch.Tensor:
        """-> [1 + h*w, 1 + h*w] float32 neighbourhood bias for the (h, w) patch grid (cached per grid)."""
        if grid not in self._omega:
            self._omega[grid] = gaussian_neighbourhood(grid, self.gaussian_std)
        return self._omega[grid]

    def last_block(self, block, x, grid):
        # NACLIP builds the bias in float32 and casts it to the run's dtype
        return naclip_block(block, x, self.omega(grid).to(device=x.device, dtype=x.dtype))
