"""SegCLIP's zero-shot segmentation of one crop (the official ViTSegInference.encode_decode), for a batch of crops.

Every pixel takes the center its bilinearly upsampled soft assignment prefers (arg-max over the centers); a center's
class scores are softmax(s G T^T) restricted to the crop's top-k classes (by the pooled image embedding), times the
unrestricted softmax, s = min(exp(logit_scale), 100). Background (channel 0) is 1 where a pixel's best score is below
min(bg_thresh, the crop's largest center-class score), else 0.
"""
import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..base import GroupView


class CropScores(NamedTuple):
    soft_maps: torch.Tensor  # [B, G, H, W] soft center assignment upsampled to the crop
    affinity: torch.Tensor   # [B, G, N] center-class scores (top-k restricted softmax x softmax)


def crop_scores(model, img: torch.Tensor, text_embedding: torch.Tensor, top_k: int, amp_dtype=None) -> CropScores:
    """img: [B, 3, H, W] normalised crops; text_embedding: [N, C] unit class embeddings."""
    autocast = (torch.autocast(img.device.type, dtype=amp_dtype) if amp_dtype is not None
                else contextlib.nullcontext())
    with autocast:
        outs = model.image_forward(img)
    h, w = outs.grid
    soft = outs.assignment.soft.float() if amp_dtype is not None else outs.assignment.soft
    soft = soft.unflatten(-1, (h, w))
    soft_maps = F.interpolate(soft, size=img.shape[-2:], mode='bilinear', align_corners=False)
    text_embedding = text_embedding.to(soft.dtype)
    centers = F.normalize(outs.image_feat.to(soft.dtype), dim=-1)
    pooled = F.normalize(outs.image_x.to(soft.dtype), dim=-1)
    scale = torch.clamp(model.clip.logit_scale.exp(), max=100).to(soft.dtype)
    center_logits = centers @ text_embedding.T * scale  # [B, G, N]
    unrestricted = F.softmax(center_logits, dim=-1)
    pooled_probs = F.softmax(pooled @ text_embedding.T * scale, dim=-1)  # [B, N]
    top = pooled_probs.topk(dim=-1, k=min(top_k, text_embedding.shape[0])).indices
    keep = torch.zeros_like(pooled_probs, dtype=torch.bool).scatter_(-1, top, True)
    restricted = F.softmax(center_logits.masked_fill(~keep[:, None], float('-inf')), dim=-1)
    return CropScores(soft_maps, restricted * unrestricted)


def segment_crops(model, img, text_embedding, with_bg: bool, bg_thresh: float, top_k: int = 5,
                  amp_dtype=None) -> torch.Tensor:
    """img: [B, 3, H, W]; text_embedding: [N, C] -> logits [B, N (+1, background first), H, W] in img's dtype."""
    scores = crop_scores(model, img, text_embedding, top_k, amp_dtype)
    center = scores.soft_maps.argmax(dim=1)  # [B, H, W]
    B, G, N = scores.affinity.shape
    per_pixel = torch.gather(scores.affinity, 1, center.flatten(1)[..., None].expand(-1, -1, N))  # [B, H*W, N]
    logits = per_pixel.transpose(1, 2).unflatten(-1, img.shape[-2:]).to(img.dtype)
    if not with_bg:
        return logits
    thresh = torch.clamp(scores.affinity.flatten(1).max(dim=1).values, max=bg_thresh)  # [B]
    background = (logits.max(dim=1).values < thresh.to(logits.dtype)[:, None, None]).to(img.dtype)
    return torch.cat([background[:, None], logits], dim=1)


@torch.no_grad()
def group_view(model, img, text_embedding, bg_thresh: float, top_k: int = 5) -> GroupView:
    """img: [1, 3, h, w] -> the centers' soft maps [h, w, G] and their class scores [G, N]."""
    scores = crop_scores(model, img, text_embedding, top_k)
    affinity = scores.affinity[0]
    return GroupView([scores.soft_maps[0].permute(1, 2, 0)], affinity,
                     min(float(bg_thresh), float(affinity.max())))
