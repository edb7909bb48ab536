"""Transformer building blocks shared by the image and text encoders."""
import torch
import torch.distributed.nn.functional as dist_nn
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, trunc_normal_

from utils.distributed import get_world_size


def init_vit_weights(m: nn.Module) -> None:
    """The ViT initialisation (timm's, as GroupViT publishes it): truncated-normal linear weights, zero biases,
    unit LayerNorms; for `module.apply`."""
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=.02)
        if m.bias is not None:
            nn.init.constant_(m.bias, 0)
    elif isinstance(m, nn.LayerNorm):
        nn.init.constant_(m.bias, 0)
        nn.init.constant_(m.weight, 1.0)


class Mlp(nn.Module):
    """fc1 -> GELU -> dropout -> fc2 -> dropout, on the last dimension."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.):
        super().__init__()
        out_features = out_features or in_features
        hidden_features = hidden_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, out_features)
        self.drop = nn.Dropout(drop)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class MixerMlp(Mlp):
    """An Mlp over the token axis: x [B, L, C] -> [B, L_out, C]."""

    def forward(self, x):
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head attention.

    With `qkv_fuse` it is self-attention with one `qkv` projection (the published block layout);
    otherwise `q_proj`/`k_proj`/`v_proj` allow a query set that differs from the key set.
    `fused_attn` uses `F.scaled_dot_product_attention`: the same function, but not the same bits as the
    published softmax(q k^T * scale) v, and hard (argmax) group assignments downstream can flip on a last bit.
    """

    def __init__(self, dim, num_heads, out_dim=None, qkv_bias=False, qk_scale=None, attn_drop=0., proj_drop=0.,
                 qkv_fuse=False, fused_attn=False):
        super().__init__()
        self.fused_attn = fused_attn
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv_fuse = qkv_fuse
        if qkv_fuse:
            self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        else:
            self.q_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.k_proj = nn.Linear(dim, dim, bias=qkv_bias)
            self.v_proj = nn.Linear(dim, dim, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, out_dim or dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _heads(self, x):
        """x: [B, N, C] -> [B, heads, N, C // heads]"""
        B, N, C = x.shape
        return x.reshape(B, N, self.num_heads, C // self.num_heads).transpose(1, 2)

    def forward(self, query, key=None, value=None):
        """query: [B, N, C]; key, value: [B, S, C] (default: query) -> [B, N, C_out]"""
        if self.qkv_fuse:
            q, k, v = self._split_qkv(query)
        else:
            key = query if key is None else key
            value = key if value is None else value
            q, k, v = self._heads(self.q_proj(query)), self._heads(self.k_proj(key)), self._heads(self.v_proj(value))
        if self.fused_attn:
            out = F.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0., scale=self.scale)
        else:
            out = self.attn_drop(((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)) @ v
        out = out.transpose(1, 2).flatten(2)
        return self.proj_drop(self.proj(out))

    def _split_qkv(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        return qkv[0], qkv[1], qkv[2]


class AttnBlock(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm, fused_attn=False):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop, qkv_fuse=True, fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, x):
        """x: [B, L, C] -> [B, L, C]"""
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class CrossAttnBlock(nn.Module):
    """Queries attend to keys: q + attn(q, k), then + mlp; `post_norm` normalises the output instead of the inputs."""

    def __init__(self, dim, num_heads, mlp_ratio=4., qkv_bias=False, qk_scale=None, drop=0., attn_drop=0.,
                 drop_path=0., act_layer=nn.GELU, norm_layer=nn.LayerNorm, post_norm=False, fused_attn=False):
        super().__init__()
        if post_norm:
            self.norm_post = norm_layer(dim)
            self.norm_q = nn.Identity()
            self.norm_k = nn.Identity()
        else:
            self.norm_q = norm_layer(dim)
            self.norm_k = norm_layer(dim)
            self.norm_post = nn.Identity()
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale, attn_drop=attn_drop,
                              proj_drop=drop, fused_attn=fused_attn)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer, drop=drop)

    def forward(self, query, key):
        """query: [B, N, C], key: [B, S, C] -> [B, N, C]"""
        x = query + self.drop_path(self.attn(self.norm_q(query), self.norm_k(key)))
        x = x + self.drop_path(self.mlp(self.norm2(x)))
        return self.norm_post(x)


class DistributedBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics span every rank (like SyncBatchNorm, also on CPU/gloo).

    Same parameters and buffers as `nn.BatchNorm1d`; in one process it is exactly `nn.BatchNorm1d`.
    """

    def forward(self, x):
        if not self.training or get_world_size() == 1:
            return super().forward(x)
        dims = [0] + list(range(2, x.dim()))
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
        x32 = x.to(torch.promote_types(x.dtype, torch.float32))  # statistics in at least float32, also under autocast
        count = x32.new_tensor([float(x.numel() // x.shape[1])])
        sums = dist_nn.all_reduce(torch.cat([x32.sum(dims), count]))
        total = sums[-1]
        mean = sums[:-1] / total
        centered = x32 - mean.reshape(shape)
        var = dist_nn.all_reduce((centered * centered).sum(dims)) / total
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            m = self.momentum
            self.running_mean.mul_(1 - m).add_(mean.detach().to(self.running_mean.dtype), alpha=m)
            unbiased = var.detach() * total / (total - 1)
            self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)
        out = centered / torch.sqrt(var.reshape(shape) + self.eps)
        out = out * self.weight.reshape(shape).to(out.dtype) + self.bias.reshape(shape).to(out.dtype)
        return out.to(x.dtype)


class ProjectMLP(nn.Module):
    """Point-wise MLP projector of 1x1 Conv1d + BatchNorm + ReLU layers: x [B, C] or [B, L, C] -> [..., out_dim].

    `sync_bn` makes its batch statistics global over ranks (the published projectors use SyncBatchNorm).
    """

    def __init__(self, in_dim=256, inner_dim=4096, out_dim=256, num_layers=2, sync_bn=False):
        super().__init__()
        bn = DistributedBatchNorm1d if sync_bn else nn.BatchNorm1d
        hidden = []
        for i in range(num_layers - 1):
            hidden += [nn.Conv1d(in_dim if i == 0 else inner_dim, inner_dim, kernel_size=1), bn(inner_dim),
                       nn.ReLU(inplace=True)]
        self.linear_hidden = nn.Sequential(*hidden)
        if num_layers >= 1:
            self.linear_out = nn.Conv1d(in_dim if num_layers == 1 else inner_dim, out_dim, kernel_size=1)
        else:
            self.linear_out = nn.Identity()

    def forward(self, x):
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(1)
        x = self.linear_out(self.linear_hidden(x.transpose(1, 2))).transpose(1, 2)
        return x.squeeze(1) if squeeze else x
