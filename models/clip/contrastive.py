"""CLIP as a method: trained from scratch (or fine-tuned) on image-caption pairs with the symmetric InfoNCE, and
segmenting zero-shot with its dense MaskCLIP-style features.

Its state dict is OpenAI's CLIP under `clip.`, so a checkpoint of it is a CLIP file for `build_clip` (TCL's
`clip_model`, the training-free methods)."""
from typing import Dict

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank

from ..base import SegmentationMethod
from ..builder import MODELS
from . import build_clip


@MODELS.register_module()
class ContrastiveCLIP(SegmentationMethod):
    """clip_model: as `build_clip` takes it (an architecture name, a mapping of CLIP's constructor arguments, or a
    CLIP file). The temperature is CLIP's `logit_scale` (initialised to log(1/0.07), its exp clamped at 100)."""

    def __init__(self, clip_model='ViT-B/16'):
        super().__init__()
        self.clip = build_clip(clip_model)

    @property
    def patch_size(self) -> int:
        return self.clip.visual.patch_size

    @property
    def context_length(self) -> int:
        return self.clip.context_length

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> [B, C] (unnormalised)."""
        return self.clip.encode_image(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """text: [B, context_length] token ids -> [B, C] (unnormalised)."""
        return self.clip.encode_text(text)

    def forward_train(self, image: torch.Tensor, text: torch.Tensor, **inputs) -> Dict[str, torch.Tensor]:
        """image: [B, 3, H, W]; text: [B, L] caption tokens -> {'loss': symmetric InfoNCE over the global batch,
        'logit_scale': exp of the temperature parameter (logged only)}."""
        if text.dim() != 2:
            raise ValueError(f'CLIP trains on one caption per image: text must be [B, L] token ids, got shape '
                             f'{tuple(text.shape)}')
        image_x = F.normalize(self.encode_image(image), dim=-1)
        text_x = F.normalize(self.encode_text(text), dim=-1)
        labels = torch.arange(image.shape[0], device=image.device) + image.shape[0] * get_rank()
        scale = torch.clamp(self.clip.logit_scale.exp(), max=100)
        loss_img = F.cross_entropy(image_x @ all_gather_with_grad(text_x).t() * scale, labels)
        loss_text = F.cross_entropy(text_x @ all_gather_with_grad(image_x).t() * scale, labels)
        return {'loss': 0.5 * (loss_img + loss_text), 'logit_scale': scale.detach()}

    def dense_embedding(self, img: torch.Tensor) -> torch.Tensor:
        """img: [B, 3, H, W] -> [B, C, h, w]: every patch token after MaskCLIP's last block (each token attends to
        itself only: its value path), ln_post and proj."""
        from ..training_free.last_block import maskclip_block
        visual = self.clip.visual
        h, w = visual.patch_grid(img)
        x = maskclip_block(visual.transformer.resblocks[-1], visual.tokens_before_last_block(img))
        return visual.project(x[1:]).permute(1, 2, 0).unflatten(2, (h, w))

    def zero_shot_logits(self, img: torch.Tensor, text_embedding: torch.Tensor, with_bg: bool,
                         bg_thresh: float) -> torch.Tensor:
        """img: [B, 3, H, W]; text_embedding: [N, C] -> [B, N (+1), H, W]: cosine similarity of each patch's dense
        embedding with each class, resized bilinearly to the crop, after a constant bg_thresh channel (with_bg)."""
        dense = F.normalize(self.dense_embedding(img), dim=1)
        cos = torch.einsum('bchw,nc->bnhw', dense, F.normalize(text_embedding, dim=-1))
        cos = F.interpolate(cos, size=img.shape[-2:], mode='bilinear', align_corners=False)
        if not with_bg:
            return cos
        return torch.cat([torch.full_like(cos[:, :1], bg_thresh), cos], dim=1)
