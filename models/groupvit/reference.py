"""The published per-crop computation step by step (two encoder passes, every stage's group map resized, one-hot
matrix products), kept as the reference that :func:`zero_shot_logits` is checked against in tests and benchmarks.
It computes what the published code computes, also where the result is not used, so that its cost is the
published cost."""
import torch
import torch.nn.functional as F
from einops import rearrange

from .segmentation import feature_grid


def _resize_stage_map(product, size):
    """product: [1, heads, N, G] soft assignment of the N patches -> [1, H, W, G], resized twice as published
    (once from the patch grid, once more from the image size to itself)."""
    h, w = feature_grid(product.shape[2], *size)
    maps = rearrange(product, 'b nh (h w) g -> (b nh) g h w', h=h, w=w)
    maps = F.interpolate(maps, size=size, mode='bilinear', align_corners=False)
    maps = rearrange(maps, '(b nh) g h w -> b nh h w g', b=product.shape[0])[:, 0]
    maps = F.interpolate(rearrange(maps, 'b h w g -> b g h w'), size=size, mode='bilinear', align_corners=False)
    return rearrange(maps, 'b g h w -> b h w g')


def _published_group_map(model, img):
    """img: [1, 3, H, W] -> [H, W, G]: first encoder pass, soft maps multiplied stage by stage; like the published
    code, every stage's map is resized (the cost of a real run), and the last one is used."""
    attn_dicts = model.img_encoder(img, return_attn=True, as_dict=True)['attn_dicts']
    product, maps = None, []
    for attn in attn_dicts:
        if attn is None:
            continue
        soft = rearrange(attn['soft'], 'b h g n -> b h n g')
        product = soft if product is None else product @ soft
        maps.append(_resize_stage_map(product, tuple(img.shape[-2:])))
    return maps[-1][0]


@torch.no_grad()
def published_protocol_logits(model, img, text_embedding, with_bg, bg_thresh, top_k=5):
    """img: [1, 3, H, W]; text_embedding: [N, C] -> [1, N (+1), H, W], as the published encode_decode."""
    if img.shape[0] != 1:
        raise ValueError(f'the published protocol takes one crop at a time, got a batch of {img.shape[0]}')
    group_map = _published_group_map(model, img)
    outs = model.encode_image(img, return_feat=True, as_dict=True)
    groups = F.normalize(outs['image_feat'].squeeze(0), dim=-1)
    pooled = F.normalize(outs['image_x'], dim=-1)
    onehot = F.one_hot(group_map.argmax(dim=-1), num_classes=group_map.shape[-1]).to(group_map.dtype)

    num_fg = text_embedding.shape[0]
    offset = 1 if with_bg else 0
    scale = torch.clamp(model.logit_scale.exp(), max=100)
    affinity = (groups @ text_embedding.T) * scale
    unrestricted = F.softmax(affinity, dim=-1)
    pooled_prob = F.softmax((pooled @ text_embedding.T) * scale, dim=-1)
    mask = torch.zeros_like(pooled_prob)
    top = pooled_prob.topk(dim=-1, k=min(top_k, num_fg))
    mask.scatter_add_(dim=-1, index=top.indices, src=torch.ones_like(top.values))
    affinity = F.softmax(affinity.masked_fill(~mask.bool(), float('-inf')), dim=-1) * unrestricted

    logits = torch.zeros(num_fg + offset, *group_map.shape[:2], device=img.device, dtype=img.dtype)
    logits[offset:] = rearrange(onehot @ affinity, 'h w c -> c h w')
    if with_bg:
        thresh = min(bg_thresh, affinity.max().item())
        logits[0, (onehot @ affinity).max(dim=-1).values < thresh] = 1  # the product again, as published
    return logits.unsqueeze(0)
