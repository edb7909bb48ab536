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
    CLIP file). The temperature is CLIP's `logit_scale` (initialised to log(1/0.07), its exp clamped at 100).

    word_loss_weight > 0 (not in CLIP; the toy world's emergence recipe): the prompted words of a multi-label batch
    (`data.text_aug.multi_label` = k) are grounded in single patches. Each word's image-side score is its best
    patch's cosine with the dense embeddings the segmentation uses (`dense_embedding`), and every image's scores
    over the batch's distinct words are trained with a soft-target cross-entropy spread over the words of its own
    caption (`word_loss`)."""

    def __init__(self, clip_model='ViT-B/16', word_loss_weight: float = 0.0):
        super().__init__()
        self.clip = build_clip(clip_model)
        if word_loss_weight < 0:
            raise ValueError(f'word_loss_weight must be >= 0, got {word_loss_weight}')
        self.word_loss_weight = word_loss_weight

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
        """image: [B, 3, H, W]; text: [B, L] caption tokens, or [B, 1 + k, L] (caption, then k prompted words) with
        word_loss_weight > 0 -> {'loss': symmetric InfoNCE over the global batch, 'logit_scale': exp of the
        temperature parameter (logged only)}, plus 'word_loss' with word_loss_weight > 0."""
        words = None
        if self.word_loss_weight > 0:
            if text.dim() != 3 or text.shape[1] < 2:
                raise ValueError(f'word_loss_weight > 0 needs prompted words: text must be [B, 1 + k, L] token ids '
                                 f'(data.text_aug.multi_label = k > 0), got shape {tuple(text.shape)}')
            text, words = text[:, 0], text[:, 1:]
        elif text.dim() != 2:
            raise ValueError(f'CLIP trains on one caption per image: text must be [B, L] token ids, got shape '
                             f'{tuple(text.shape)}')
        if words is None:
            image_x = self.encode_image(image)
        else:
            visual = self.clip.visual
            tokens = visual.tokens_before_last_block(image)  # shared by the class token and the dense embeddings
            image_x = visual.project(visual.transformer.resblocks[-1](tokens, None)[0])
            dense = self.dense_from_tokens(tokens, visual.patch_grid(image))
        image_x = F.normalize(image_x, dim=-1)
        text_x = F.normalize(self.encode_text(text), dim=-1)
        labels = torch.arange(image.shape[0], device=image.device) + image.shape[0] * get_rank()
        scale = torch.clamp(self.clip.logit_scale.exp(), max=100)
        loss_img = F.cross_entropy(image_x @ all_gather_with_grad(text_x).t() * scale, labels)
        loss_text = F.cross_entropy(text_x @ all_gather_with_grad(image_x).t() * scale, labels)
        losses = {'loss': 0.5 * (loss_img + loss_text), 'logit_scale': scale.detach()}
        if words is not None:
            losses['word_loss'] = self.word_loss_weight * self.word_loss(dense, text, words, scale)
        return losses

    def word_loss(self, dense: torch.Tensor, caption: torch.Tensor, words: torch.Tensor,
                  scale: torch.Tensor) -> torch.Tensor:
        """dense: [B, C, h, w] dense embeddings; caption: [B, L]; words: [B, k, L] prompted words (a copy of the
        caption pads captions with fewer than k words; those copies are left out) -> scalar. Per rank: the words of
        the local batch."""
        B, k, L = words.shape
        own = (words != caption[:, None]).any(dim=-1)  # [B, k]
        distinct, index = torch.unique(words[own], dim=0, return_inverse=True)  # [U, L], [n_own]
        if distinct.shape[0] == 0:
            return dense.new_zeros(())
        target = torch.zeros(B, distinct.shape[0], dtype=dense.dtype, device=dense.device)
        rows = torch.arange(B, device=dense.device)[:, None].expand(B, k)[own]
        target[rows, index] = 1.0
        has_words = target.sum(dim=1) > 0
        target = target[has_words] / target[has_words].sum(dim=1, keepdim=True)
        word_x = F.normalize(self.encode_text(distinct), dim=-1)  # [U, C]
        dense = F.normalize(dense[has_words].flatten(2), dim=1)  # [B', C, h*w]
        best_patch = torch.einsum('bcp,uc->bup', dense, word_x).amax(dim=-1)  # [B', U]
        return torch.sum(-target * F.log_softmax(best_patch * scale, dim=-1), dim=-1).mean()

    def dense_embedding(self, img: torch.Tensor) -> torch.Tensor:
        """img: [B, 3, H, W] -> [B, C, h, w]: every patch token after MaskCLIP's last block (each token attends to
        itself only: its value path), ln_post and proj."""
        visual = self.clip.visual
        return self.dense_from_tokens(visual.tokens_before_last_block(img), visual.patch_grid(img))

    def dense_from_tokens(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """tokens: [1 + h*w, B, C] input of the last block; grid: (h, w) -> [B, C, h, w] (see dense_embedding)."""
        from ..training_free.last_block import maskclip_block
        visual = self.clip.visual
        x = maskclip_block(visual.transformer.resblocks[-1], tokens)
        return visual.project(x[1:]).permute(1, 2, 0).unflatten(2, grid)

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
