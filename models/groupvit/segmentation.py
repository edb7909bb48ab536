"""Per-crop zero-shot segmentation of GroupViT / PGSeg: group masks x group-class affinities.

Same arithmetic as the published ``GroupViTSegInference.encode_decode`` (NVlabs/GroupViT) and
``PGSegInference.encode_decode`` (Ferenas/PGSeg, identical numbers), with the image encoder run once per crop
instead of twice and several crops encoded together.
"""
import math

import torch
import torch.nn.functional as F

from ..base import GroupView
from ..pamr import PAMR, refine_with_pamr


def feature_grid(num_tokens, h, w):
    """Patch grid (h', w') of `num_tokens` tokens for an [h, w] input, by the rule of the published code."""
    scale = round(math.sqrt(h * w // num_tokens))
    if h > w:
        w_feat = w // scale
        h_feat = num_tokens // w_feat
    else:
        h_feat = h // scale
        w_feat = num_tokens // h_feat
    if h_feat * w_feat != num_tokens:
        raise ValueError(f'cannot lay out {num_tokens} tokens on a grid for a {h}x{w} input')
    return h_feat, w_feat


def final_group_maps(attn_dicts, size):
    """attn_dicts: per stage {'soft': [B, 1, G_s, N_s]} (None for the last) -> [B, H, W, G] soft assignment of
    every pixel to the final groups: product over stages, resized bilinearly (align_corners=False) to `size`."""
    product = None
    for attn in attn_dicts:
        if attn is None:
            continue
        soft = attn['soft'].transpose(-1, -2)  # [B, 1, N, G]
        product = soft if product is None else product @ soft
    B, heads, N, G = product.shape
    h, w = feature_grid(N, *size)
    maps = product.reshape(B * heads, h, w, G).permute(0, 3, 1, 2)
    maps = F.interpolate(maps, size=size, mode='bilinear', align_corners=False)
    return maps.reshape(B, heads, G, *size)[:, 0].permute(0, 2, 3, 1)


def group_class_affinity(group_emb, image_emb, text_embedding, logit_scale, top_k=5):
    """One crop. group_emb: [G, C]; image_emb: [1, C]; text_embedding: [N, C] (L2-normalised) -> [G, N].

    Softmax over the image's top-k classes (by the pooled embedding) times the softmax over all classes."""
    group_emb = F.normalize(group_emb, dim=-1)
    image_emb = F.normalize(image_emb, dim=-1)
    scale = torch.clamp(logit_scale.exp(), max=100)
    affinity = (group_emb @ text_embedding.T) * scale
    unrestricted = F.softmax(affinity, dim=-1)
    pooled = F.softmax((image_emb @ text_embedding.T) * scale, dim=-1)
    top = pooled.topk(dim=-1, k=min(top_k, text_embedding.shape[0])).indices
    keep = torch.zeros_like(pooled).scatter_(-1, top, 1.0).bool()
    restricted = F.softmax(affinity.masked_fill(~keep, float('-inf')), dim=-1)
    return restricted * unrestricted


def encode_crops(model, img, amp_dtype=None):
    """img: [B, 3, H, W] -> (group maps [B, H, W, G], group embeddings [B, G, C], pooled embeddings [B, C])
    from ONE pass of the image encoder; `amp_dtype` (e.g. torch.bfloat16) runs the encoder under autocast, and
    everything after it in float32."""
    with torch.autocast(img.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        out = model.img_encoder(img, return_attn=True, return_feat=True, as_dict=True)
    if amp_dtype is not None:
        out['attn_dicts'] = [None if a is None else {'soft': a['soft'].float()} for a in out['attn_dicts']]
        out['feat'], out['x'] = out['feat'].float(), out['x'].float()
    maps = final_group_maps(out['attn_dicts'], img.shape[-2:])
    return maps, model.img_projector(out['feat']), model.img_projector(out['x'])


def class_scores(model, img, text_embedding, top_k=5, amp_dtype=None):
    """img: [B, 3, H, W] normalised crops -> (scores [B, N, H, W], max affinity [B]).

    Every pixel takes the affinity row of its arg-max final group."""
    maps, groups, pooled = encode_crops(model, img, amp_dtype)
    labels = maps.argmax(dim=-1)  # [B, H, W]
    scores, peaks = [], []
    for b in range(img.shape[0]):
        affinity = group_class_affinity(groups[b], pooled[b:b + 1], text_embedding, model.logit_scale, top_k)
        scores.append(affinity[labels[b]].permute(2, 0, 1).to(img.dtype))
        peaks.append(affinity.max())
    return torch.stack(scores), torch.stack(peaks)


def groupvit_background(scores, max_affinity, bg_thresh):
    """scores: [B, N, H, W]; max_affinity: [B] -> [B, 1, H, W]: 1 where the best class scores below
    min(bg_thresh, the crop's largest group-class affinity), else 0."""
    thresh = torch.clamp(max_affinity, max=bg_thresh).view(-1, 1, 1)
    return (scores.max(dim=1).values < thresh).unsqueeze(1).to(scores.dtype)


BG_RULES = ('groupvit', 'tcl')


def segment_crops(model, img, text_embedding, with_bg, bg_thresh, top_k=5, bg_rule='groupvit', pamr=False,
                  pamr_iters=10, pamr_dilations=(1, 2, 4, 8, 12, 24), pamr_downsample=4, amp_dtype=None):
    """img: [B, 3, H, W] normalised crops; text_embedding: [N, C] -> logits [B, N (+1 background first), H, W].

    Class scores of every pixel's final group; PAMR (TCL's wider protocol) refines them before the background
    decision, by `bg_rule`: 'groupvit' (below min(bg_thresh, max affinity)) or 'tcl' (a constant bg_thresh).
    """
    if bg_rule not in BG_RULES:
        raise ValueError(f'bg_rule must be one of {BG_RULES}, got {bg_rule!r}')
    scores, peaks = class_scores(model, img, text_embedding, top_k, amp_dtype)
    if pamr:
        scores = refine_with_pamr(PAMR(pamr_iters, pamr_dilations), img, scores, pamr_downsample)
    if not with_bg:
        return scores
    if bg_rule == 'tcl':
        background = torch.full_like(scores[:, :1], bg_thresh)
    else:
        background = groupvit_background(scores, peaks, bg_thresh)
    return torch.cat([background, scores], dim=1)


def group_rows(model, img, text_embedding, with_bg, bg_thresh, top_k=5, bg_rule='groupvit', amp_dtype=None):
    """img: [B, 3, H, W] -> (final group of every pixel [B, H, W] long, rows [B, G, N (+1)]: each group's logits,
    background first when with_bg), the values segment_crops gives the group's pixels (without PAMR)."""
    if bg_rule not in BG_RULES:
        raise ValueError(f'bg_rule must be one of {BG_RULES}, got {bg_rule!r}')
    maps, groups, pooled = encode_crops(model, img, amp_dtype)
    rows = []
    for b in range(img.shape[0]):
        affinity = group_class_affinity(groups[b], pooled[b:b + 1], text_embedding, model.logit_scale,
                                        top_k).to(img.dtype)  # [G, N]
        if with_bg and bg_rule == 'tcl':
            affinity = torch.cat([torch.full_like(affinity[:, :1], bg_thresh), affinity], dim=1)
        elif with_bg:
            background = groupvit_background(affinity.T[None, :, :, None], affinity.max()[None], bg_thresh)
            affinity = torch.cat([background[0, 0], affinity], dim=1)
        rows.append(affinity)
    return maps.argmax(dim=-1), torch.stack(rows)


def group_view(model, img, text_embedding, bg_thresh, top_k=5, bg_rule='groupvit') -> GroupView:
    """img: [1, 3, H, W] -> the soft group maps of every grouping stage at [H, W] and the final groups' class
    affinities, from one encoder pass."""
    out = model.img_encoder(img, return_attn=True, return_feat=True, as_dict=True)
    attn = [a for a in out['attn_dicts'] if a is not None]
    maps = [final_group_maps(attn[:stage + 1], tuple(img.shape[-2:]))[0] for stage in range(len(attn))]
    affinity = group_class_affinity(model.img_projector(out['feat'])[0], model.img_projector(out['x']),
                                    text_embedding, model.logit_scale, top_k)
    if bg_rule == 'groupvit':
        bg_thresh = min(bg_thresh, float(affinity.max()))
    return GroupView(maps, affinity, bg_thresh)
