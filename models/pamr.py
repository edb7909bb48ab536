"""Pixel-adaptive mask refinement (PAMR, Araslanov & Roth, CVPR 2020) as TCL applies it at test time.

Each iteration replaces a pixel's class scores by a weighted average of its 8 neighbours at several dilations;
the weights are a softmax over neighbours of the negative colour distance, scaled by the local colour spread.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

_OFFSETS = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def shifted(x, dilations, with_centre=False):
    """x: [B, C, H, W] -> [B, C, P, H, W]: the value at each 8-neighbour (P = 8 per dilation, 9 with the centre),
    borders replicated."""
    H, W = x.shape[-2:]
    views = []
    for d in dilations:
        padded = F.pad(x, [d, d, d, d], mode='replicate')
        offsets = _OFFSETS + [(0, 0)] if with_centre else _OFFSETS
        views += [padded[..., d + dy * d:d + dy * d + H, d + dx * d:d + dx * d + W] for dy, dx in offsets]
    return torch.stack(views, dim=2)


class PAMR(nn.Module):
    """image: [B, K, H, W]; mask: [B, C, h, w] (resized to H, W) -> refined mask [B, C, H, W]."""

    def __init__(self, num_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
        super().__init__()
        self.num_iter = num_iter
        self.dilations = tuple(dilations)

    def affinity(self, image):
        """image: [B, K, H, W] -> neighbour weights [B, 1, P, H, W], summing to 1 over P."""
        spread = shifted(image, self.dilations, with_centre=True).std(dim=2, keepdim=True)
        distance = (shifted(image, self.dilations) - image.unsqueeze(2)).abs()
        logits = (-distance / (1e-8 + 0.1 * spread)).mean(dim=1, keepdim=True)
        return F.softmax(logits, dim=2)

    def forward(self, image, mask):
        mask = F.interpolate(mask, size=image.shape[-2:], mode='bilinear', align_corners=True)
        weights = self.affinity(image)
        for _ in range(self.num_iter):
            mask = (shifted(mask, self.dilations) * weights).sum(dim=2)
        return mask


def refine_with_pamr(pamr, img, scores, downsample):
    """img: [B, 3, H, W] normalised crop; scores: [B, N, H, W] -> [B, N, H, W] refined at 1/downsample resolution
    (TCL refines its H/4 masks with the image resized to them), then resized back bilinearly."""
    size = scores.shape[-2:]
    small = (max(1, size[0] // downsample), max(1, size[1] // downsample))
    low = F.interpolate(scores, size=small, mode='bilinear', align_corners=False)
    image = F.interpolate(img, size=small, mode='bilinear', align_corners=True)
    refined = pamr(image, low)
    return F.interpolate(refined, size=size, mode='bilinear', align_corners=False)
