"""TCL's masker parts: the gated residual convolution decoder, LayerNorm + projection on feature maps, the
similarity-to-mask head with its Gumbel-sigmoid, and the losses.

Module and parameter names are those of the published code (kakaobrain/tcl), so its checkpoints load as they are.
"""
import math
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

from utils.distributed import all_gather_with_grad, get_rank, get_world_size

from ..builder import MODELS

# the published code normalises with this eps everywhere (chosen there for float16)
NORMALIZE_EPS = 1e-6


def normalize(x: torch.Tensor, dim: int) -> torch.Tensor:
    """L2 normalisation with TCL's eps."""
    return F.normalize(x, dim=dim, eps=NORMALIZE_EPS)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of x [B, C, H, W]."""

    def forward(self, x):
        return F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                            self.eps).permute(0, 3, 1, 2)


NORMS = {'none': lambda channels: nn.Identity(), 'ln': LayerNorm2d, 'bn': nn.BatchNorm2d,
         'gn': lambda channels: nn.GroupNorm(32, channels)}
ACTIVATIONS = {'none': nn.Identity, 'relu': nn.ReLU, 'lrelu': lambda: nn.LeakyReLU(0.2), 'gelu': nn.GELU}


def _choice(table: dict, name, what: str):
    key = 'none' if name is None else str(name).lower()
    if key not in table:
        raise ValueError(f"model.masker.decoder.{what} must be one of {sorted(table)}, got {name!r}")
    return table[key]


class Gate(nn.Module):
    """x -> tanh(gate) * x, with a learned scalar gate."""

    def __init__(self, init: float = 0.0):
        super().__init__()
        self.gate = nn.Parameter(torch.as_tensor(float(init)))

    def forward(self, x):
        return torch.tanh(self.gate) * x


class ConvBlock(nn.Module):
    """Pre-activation convolution: norm, activation, k x k convolution (same size), gate. x: [B, C, H, W]."""

    def __init__(self, channels: int, kernel_size: int, norm: str, act: str, gate_init: float):
        super().__init__()
        self.norm = _choice(NORMS, norm, 'norm')(channels)
        self.activ = _choice(ACTIVATIONS, act, 'act')()
        self.conv = nn.Conv2d(channels, channels, kernel_size, 1, kernel_size // 2)
        self.gate = Gate(gate_init)

    def forward(self, x):
        return self.gate(self.conv(self.activ(self.norm(x))))


class ResConv(nn.Module):
    """x [B, C, H, W] -> [B, C, 2H, 2W]: nearest 2x upsampling, then one (or, `double`, two) gated residual
    convolutions."""

    def __init__(self, channels: int, kernel_size: int, norm: str, act: str, double: bool, gate_init: float):
        super().__init__()
        self.double = double
        self.conv = ConvBlock(channels, kernel_size, norm, act, gate_init)
        if double:
            self.conv2 = ConvBlock(channels, kernel_size, norm, act, gate_init)

    def forward(self, x):
        x = F.interpolate(x, scale_factor=2)
        x = x + self.conv(x)
        if self.double:
            x = x + self.conv2(x)
        return x


@MODELS.register_module()
class GDecoder(nn.Module):
    """TCL's mask decoder: n_layers ResConv blocks, each doubling the resolution. x [B, C, h, w] ->
    [B, C, h * 2^n_layers, w * 2^n_layers].

    gate_init: the initial value of every residual gate. The published 0 makes the decoder start as nearest
    upsampling, and its convolutions get no gradient until the gates move.
    """

    def __init__(self, channels: int, kernel_size: int = 3, norm: str = 'ln', act: str = 'gelu', double: bool = True,
                 n_layers: int = 2, gate_init: float = 0.0):
        super().__init__()
        if n_layers < 0:
            raise ValueError(f'model.masker.decoder.n_layers must be >= 0, got {n_layers}')
        self.net = nn.Sequential(*[ResConv(channels, kernel_size, norm, act, double, gate_init)
                                   for _ in range(n_layers)])

    def forward(self, x):
        return self.net(x)


class LNProjection(nn.Module):
    """CLIP's ln_post + proj on token embeddings [B, L, C] or feature maps [B, C, H, W] (-> [B, out, H, W])."""

    def __init__(self, ln: nn.LayerNorm, proj: nn.Parameter):
        super().__init__()
        self.ln = ln
        self.proj = proj

    def forward(self, x):
        if x.dim() == 4:
            H, W = x.shape[-2:]
            x = rearrange(x, 'B C H W -> B (H W) C')
            return rearrange(self.ln(x) @ self.proj, 'B (H W) C -> B C H W', H=H, W=W)
        return self.ln(x) @ self.proj


def gumbel_sigmoid_hard(logits: torch.Tensor, tau: float) -> torch.Tensor:
    """Straight-through Gumbel-sigmoid: 1 where sigmoid((logits + logistic noise) / tau) > 0.5, with the soft
    sample's gradient. The noise is ONE torch.rand_like(logits) draw, turned into Logistic(0, 1) as published."""
    uniform = torch.rand_like(logits)
    logistic = uniform.div_(1.0 - uniform).log_()
    soft = ((logits + logistic) / tau).sigmoid_()
    hard = soft.gt(0.5).type(soft.dtype)
    return hard - soft.detach() + soft


class Sim2Mask(nn.Module):
    """Cosine similarity -> mask: soft = sigmoid(w * cos + b); hard = thresholded soft (deterministic) or a
    straight-through Gumbel-sigmoid sample (training). w and b are learned when `learnable`."""

    def __init__(self, init_w: float = 1.0, init_b: float = 0.0, gumbel_tau: float = 1.0, learnable: bool = True):
        super().__init__()
        self.gumbel_tau = gumbel_tau
        if learnable:
            self.w = nn.Parameter(torch.full([], float(init_w)))
            self.b = nn.Parameter(torch.full([], float(init_b)))
        else:
            self.w, self.b = float(init_w), float(init_b)

    def forward(self, x: torch.Tensor, deterministic: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
        """x: similarities [...] -> (hard mask, soft mask), both shaped like x."""
        logits = x * self.w + self.b
        soft = torch.sigmoid(logits)
        hard = soft.gt(0.5).type(logits.dtype) if deterministic else gumbel_sigmoid_hard(logits, self.gumbel_tau)
        return hard, soft


def tv_loss(x: torch.Tensor) -> torch.Tensor:
    """Total variation of x [B, C, H, W]: mean |horizontal difference| + mean |vertical difference|."""
    return (x[:, :, :, :-1] - x[:, :, :, 1:]).abs().mean() + (x[:, :, :-1, :] - x[:, :, 1:, :]).abs().mean()


def area_loss(mask: torch.Tensor, prior: float) -> torch.Tensor:
    """|mean(mask) - prior| (the mask's mean area pulled to `prior`)."""
    return (mask.mean() - prior).abs()


class InfoNCE(nn.Module):
    """Symmetric InfoNCE over the global batch with a learned temperature (logit scale clamped at 100)."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / temperature))

    def labels(self, B: int, device) -> torch.Tensor:
        return torch.arange(B, dtype=torch.long, device=device) + B * get_rank()

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """image_emb, text_emb: [B, C] (this rank's pairs) -> scalar."""
        labels = self.labels(image_emb.shape[0], image_emb.device)
        image_emb, text_emb = normalize(image_emb, -1), normalize(text_emb, -1)
        logits_per_img = image_emb @ all_gather_with_grad(text_emb).t()
        logits_per_text = text_emb @ all_gather_with_grad(image_emb).t()
        scale = torch.clamp(self.logit_scale.exp(), max=100)
        return 0.5 * (F.cross_entropy(logits_per_img * scale, labels)
                      + F.cross_entropy(logits_per_text * scale, labels))


class ExtendedInfoNCE(InfoNCE):
    """InfoNCE where image i has one embedding per text j (its region masked by text j's mask)."""

    def forward(self, image_emb: torch.Tensor, text_emb: torch.Tensor) -> torch.Tensor:
        """image_emb: [B, B * world, C] (image i pooled by the mask of global text j); text_emb: [B, C] -> scalar."""
        B, world = image_emb.shape[0], get_world_size()
        if image_emb.shape[1] != B * world:
            raise ValueError(f'image_emb must be [B, B * world, C] = [{B}, {B * world}, C], got '
                             f'{tuple(image_emb.shape)}')
        labels = self.labels(B, image_emb.device)
        image_emb, text_emb = normalize(image_emb, -1), normalize(text_emb, -1)
        logits_per_img = torch.einsum('bnc,nc->bn', image_emb, all_gather_with_grad(text_emb))
        own_texts = image_emb.chunk(world, dim=1)[get_rank()].contiguous()  # [B, B, C]: this rank's texts
        logits_per_text = torch.einsum('nbc,bc->bn', all_gather_with_grad(own_texts), text_emb)
        scale = torch.clamp(self.logit_scale.exp(), max=100)
        return 0.5 * (F.cross_entropy(logits_per_img * scale, labels)
                      + F.cross_entropy(logits_per_text * scale, labels))
