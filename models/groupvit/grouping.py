"""Grouping: assigning image tokens to group tokens (GroupViT's grouping block)."""
import torch
import torch.nn as nn

from ..layers import CrossAttnBlock, Mlp


def straight_through(y_soft: torch.Tensor, dim: int) -> torch.Tensor:
    """One-hot of the argmax along `dim` in the forward pass, gradient of `y_soft` in the backward pass."""
    index = y_soft.max(dim, keepdim=True)[1]
    y_hard = torch.zeros_like(y_soft).scatter_(dim, index, 1.0)
    return y_hard - y_soft.detach() + y_soft


def hard_softmax(logits: torch.Tensor, dim: int) -> torch.Tensor:
    return straight_through(logits.softmax(dim), dim)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1., hard: bool = False, dim: int = -1,
                   noise_scale: float = 1.) -> torch.Tensor:
    """Gumbel-softmax sample; `hard` makes it one-hot with straight-through gradients; `noise_scale` multiplies
    the Gumbel noise (1: the published sampler; below 1 the sample follows the logits more closely)."""
    gumbel = torch.distributions.gumbel.Gumbel(
        torch.tensor(0., device=logits.device, dtype=logits.dtype),
        torch.tensor(1., device=logits.device, dtype=logits.dtype))
    noise = gumbel.sample(logits.shape)
    if noise_scale != 1.:
        noise = noise * noise_scale
    y_soft = ((logits + noise) / tau).softmax(dim)
    return straight_through(y_soft, dim) if hard else y_soft


class AssignAttention(nn.Module):
    """Single-head attention whose softmax runs over the *queries* (groups), so each key (image token)
    is assigned to one group; outputs are the assignment-weighted means of the values."""

    def __init__(self, dim, num_heads=1, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0., hard=True,
                 gumbel=False, gumbel_tau=1., sum_assign=False, assign_eps=1., gumbel_scale=1.):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.hard = hard
        self.gumbel = gumbel
        self.gumbel_tau = gumbel_tau
        self.gumbel_scale = gumbel_scale
        self.sum_assign = sum_assign
        self.assign_eps = assign_eps

    def assign(self, logits: torch.Tensor) -> torch.Tensor:
        """logits: [B, h, G, L] -> assignment over G: Gumbel in training, argmax (straight-through) in eval."""
        if self.gumbel and self.training:
            return gumbel_softmax(logits, tau=self.gumbel_tau, hard=self.hard, dim=-2, noise_scale=self.gumbel_scale)
        return hard_softmax(logits, dim=-2) if self.hard else logits.softmax(dim=-2)

    def _heads(self, x):
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, query, key, return_attn=False):
        """query: [B, G, C] groups; key: [B, L, C] tokens -> (out [B, G, C], {'hard','soft'}: [B, h, G, L] or None)"""
        q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(key))
        logits = (q @ k.transpose(-2, -1)) * self.scale
        attn = self.assign(logits)
        attn_dict = {'hard': attn.clone(), 'soft': logits.softmax(dim=-2)} if return_attn else None
        if not self.sum_assign:
            attn = attn / (attn.sum(dim=-1, keepdim=True) + self.assign_eps)
        out = (self.attn_drop(attn) @ v).transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(out)), attn_dict


class GroupingBlock(nn.Module):
    """Turns L image tokens into `num_output_group` segment tokens.

    The input group tokens are mixed into `num_output_group` centres (MLP over the token axis), refined by
    cross-attention to the image tokens, then each image token is hard-assigned to one centre and the centres
    take the mean of their tokens.
    """

    def __init__(self, *, dim, out_dim, num_heads, num_group_token, num_output_group, norm_layer=nn.LayerNorm,
                 mlp_ratio=(0.5, 4.0), hard=True, gumbel=True, sum_assign=False, assign_eps=1., gumbel_tau=1.,
                 fused_attn=False, gumbel_scale=1.):
        super().__init__()
        self.dim = dim
        self.out_dim = out_dim
        self.num_output_group = num_output_group
        tokens_dim, channels_dim = (int(r * dim) for r in mlp_ratio)
        self.norm_tokens = norm_layer(dim)
        self.mlp_inter = Mlp(num_group_token, tokens_dim, num_output_group)
        self.norm_post_tokens = norm_layer(dim)
        self.norm_x = norm_layer(dim)
        self.pre_assign_attn = CrossAttnBlock(dim, num_heads, mlp_ratio=4, qkv_bias=True, norm_layer=norm_layer,
                                              post_norm=True, fused_attn=fused_attn)
        self.assign = AssignAttention(dim, num_heads=1, qkv_bias=True, hard=hard, gumbel=gumbel,
                                      gumbel_tau=gumbel_tau, sum_assign=sum_assign, assign_eps=assign_eps,
                                      gumbel_scale=gumbel_scale)
        self.norm_new_x = norm_layer(dim)
        self.mlp_channels = Mlp(dim, channels_dim, out_dim)
        if out_dim is not None and dim != out_dim:
            self.reduction = nn.Sequential(norm_layer(dim), nn.Linear(dim, out_dim, bias=False))
        else:
            self.reduction = nn.Identity()

    def group_centers(self, group_tokens):
        """group_tokens: [B, S_in, C] -> [B, S_out, C]"""
        projected = self.mlp_inter(group_tokens.transpose(1, 2)).transpose(1, 2)
        return self.norm_post_tokens(projected)

    def forward(self, x, group_tokens, return_attn=False):
        """x: [B, L, C] image tokens; group_tokens: [B, S_in, C]
        -> (new_x [B, S_out, C_out], attn_dict or None, centers [B, S_out, C] before assignment)"""
        group_tokens = self.norm_tokens(group_tokens)
        x = self.norm_x(x)
        centers = self.pre_assign_attn(self.group_centers(group_tokens), x)
        new_x, attn_dict = self.assign(centers, x, return_attn=return_attn)
        new_x = new_x + centers
        new_x = self.reduction(new_x) + self.mlp_channels(self.norm_new_x(new_x))
        return new_x, attn_dict, centers
