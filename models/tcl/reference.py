"""The published per-crop computation of TCL (`TCLSegInference.encode_decode` -> `generate_masks`), kept as the
reference that :func:`TCL.zero_shot_logits` is checked against in tests and benchmarks. It differs from ours where
the published code computes differently: PAMR through its 3x3 convolution kernels (one conv2d per dilation for the
colour differences, the local spread and every refinement step), one crop at a time, the hooked CLIP features
cloned, and the background channel in float32."""
import torch
import torch.nn.functional as F

from .model import compute_padsize


def _kernels(dtype, device):
    """(difference, copy, spread) kernels of the published LocalAffinityAbs / LocalAffinityCopy / LocalStDev:
    [8, 1, 3, 3] centre minus neighbour, [8, 1, 3, 3] neighbour, [9, 1, 3, 3] every position of the 3x3 window."""
    diff, copy = torch.zeros(8, 1, 3, 3), torch.zeros(8, 1, 3, 3)
    neighbours = [(r, c) for r in range(3) for c in range(3) if (r, c) != (1, 1)]
    for i, (r, c) in enumerate(neighbours):
        diff[i, 0, 1, 1], diff[i, 0, r, c] = 1, -1
        copy[i, 0, r, c] = 1
    spread = torch.eye(9).view(9, 1, 3, 3)
    return tuple(k.to(dtype=dtype, device=device) for k in (diff, copy, spread))


def _local(x, kernel, dilations):
    """x: [B, K, H, W] -> [B, K, P, H, W]: the kernel's outputs at every dilation (replicate padding)."""
    B, K, H, W = x.shape
    flat = x.reshape(B * K, 1, H, W)
    out = torch.cat([F.conv2d(F.pad(flat, [d] * 4, mode='replicate'), kernel, dilation=d) for d in dilations], 1)
    return out.view(B, K, -1, H, W)


def published_pamr(image, mask, num_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
    """image: [B, K, H, W]; mask: [B, C, h, w] -> [B, C, H, W], as the published PAMR module computes it."""
    diff, copy, spread = _kernels(image.dtype, image.device)
    mask = F.interpolate(mask, size=image.shape[-2:], mode='bilinear', align_corners=True)
    std = _local(image, spread, dilations).std(2, keepdim=True)
    affinity = F.softmax((-_local(image, diff, dilations).abs() / (1e-8 + 0.1 * std)).mean(1, keepdim=True), 2)
    for _ in range(num_iter):
        mask = (_local(mask, copy, dilations) * affinity).sum(2)
    return mask


@torch.no_grad()
def published_crop_logits(model, img, text_embedding, with_bg, bg_thresh, pamr=False, kp_w=0.3):
    """img: [1, 3, H, W] normalised crop; text_embedding: [N, C] -> [1, N (+1), H, W] as the published encode_decode."""
    if img.shape[0] != 1:
        raise ValueError(f'the published protocol takes one crop at a time, got a batch of {img.shape[0]}')
    H, W = img.shape[2:]
    pad = compute_padsize(H, W, model.patch_size)
    image = F.pad(img, pad) if any(pad) else img
    grid = model.clip_image_encoder.clip_visual.patch_grid(image)
    clip_dense, image_feat = model.clip_image_encoder.dense(image, model.ie_freeze, model.masker.ignore_last_attn)
    clip_dense, image_feat = clip_dense.clone(), image_feat.clone()  # the published feature hooks clone
    mask, _ = model.masker.forward_seg(image_feat, grid, text_embedding)
    if pamr:
        mask = published_pamr(F.interpolate(image, mask.shape[-2:], mode='bilinear', align_corners=True), mask)
    if kp_w:
        mask = kp_w * model.keep_prompt_mask(clip_dense, text_embedding, mask.shape[2:]) + (1.0 - kp_w) * mask
    mask = F.interpolate(mask, image.shape[2:], mode='bilinear')
    mask = mask[:, :, pad[2]:pad[2] + H, pad[0]:pad[0] + W]
    if not with_bg:
        return mask
    background = torch.full([1, 1, H, W], bg_thresh, dtype=torch.float, device=mask.device)
    return torch.cat([background, mask], dim=1)
