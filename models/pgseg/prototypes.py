"""PGSeg's prototype supervision: EM prototypes of features, matching to group tokens, and their contrastive loss."""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from utils.distributed import all_gather_no_grad

from ..layers import ProjectMLP


@torch.no_grad()
def em_prototypes(x: torch.Tensor, mu: torch.Tensor, iters: int, dim: int = 2):
    """Soft k-means (EM) of `x` around initial prototypes `mu`.

    x: [B, L, D]; mu: [B, K, D]; prototypes are L2-normalised along `dim` of mu.
    Returns (mu [B, K, D], z [B, L, K]: responsibilities of the last E-step, normalised over L).
    """
    z = None
    for _ in range(iters):
        z = (x @ mu.transpose(1, 2)).softmax(dim=-1)
        z = z / (1e-6 + z.sum(dim=1, keepdim=True))
        mu = z.transpose(1, 2) @ x
        mu = mu / (1e-6 + mu.norm(dim=dim, keepdim=True))
    return mu, z


class ImagePrototypes(nn.Module):
    """Per-image prototypes of a stage's input tokens (PGSeg's I-NPR).

    The prototypes start from a buffer `mu` [1, K, D]; their reconstruction of the tokens, passed through an
    MLP, is added to the tokens before grouping.
    """

    def __init__(self, *, dim, out_dim, num_output_group, stage=10, mom=0.9, momentum_update=False):
        super().__init__()
        self.num_output_group = num_output_group
        self.stage = stage
        self.mom = mom
        # The published code never passes is_training=True, so its image prototype buffers never move.
        self.momentum_update = momentum_update
        mu = torch.empty(1, num_output_group, out_dim).normal_(0, math.sqrt(2. / out_dim))
        self.register_buffer('mu', mu / (1e-6 + mu.norm(dim=2, keepdim=True)))
        self.mapping_x = ProjectMLP(in_dim=dim, out_dim=out_dim)

    def forward(self, x):
        """x: [B, L, C] -> (prototypes [B, K, C], reconstruction [B, L, C_out])"""
        mu, z = em_prototypes(x, self.mu.expand(x.shape[0], -1, -1), self.stage)
        recon = self.mapping_x(z @ mu)
        if self.momentum_update and self.training:
            self.mu = self.mom * self.mu + (1 - self.mom) * all_gather_no_grad(mu).mean(dim=0, keepdim=True)
        return mu, recon


class TextPrototypes(nn.Module):
    """PGSeg's T-NPR: K one-dimensional prototypes of each text embedding's channels, from a buffer `mu` [1, K, 1]."""

    def __init__(self, *, num_output_group=8, stage=10, mom=0.9, update_in_eval=True):
        super().__init__()
        self.stage = stage
        self.mom = mom
        # The published buffer is updated on every call, in eval mode and zero-shot class embedding too.
        self.update_in_eval = update_in_eval
        mu = torch.empty(1, num_output_group, 1).normal_(0, math.sqrt(2. / num_output_group))
        self.register_buffer('mu', mu / (1e-6 + mu.norm(dim=1, keepdim=True)))

    def forward(self, x):
        """x: [N, C] text embeddings (detached) -> prototypes [N, K, 1]"""
        x = x.detach().unsqueeze(-1)
        mu, _ = em_prototypes(x, self.mu.expand(x.shape[0], -1, -1), self.stage, dim=1)
        if self.training or self.update_in_eval:
            with torch.no_grad():
                self.mu = self.mom * self.mu + (1 - self.mom) * all_gather_no_grad(mu).mean(dim=0, keepdim=True)
        return mu


@torch.no_grad()
def hungarian_match(groups: torch.Tensor, prototypes: torch.Tensor, most_similar: bool = False) -> torch.Tensor:
    """One prototype per group by cosine similarity, for each image.

    groups, prototypes: [B, G, C] -> index [B, G] into the prototypes.
    `most_similar=False` reproduces the published matching, which minimises the total similarity.
    """
    sim = F.normalize(groups, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(1, 2)
    sim = sim.cpu()
    if sim.dtype in (torch.float16, torch.bfloat16):
        sim = sim.float()
    sim = sim.numpy()
    index = np.stack([linear_sum_assignment(s, maximize=most_similar)[1] for s in sim])
    return torch.from_numpy(index).to(groups.device)


def gather_matched(prototypes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """prototypes: [B, K, C], index: [B, G] -> [B, G, C]"""
    return torch.gather(prototypes, 1, index.unsqueeze(-1).expand(-1, -1, prototypes.shape[-1]))


@torch.no_grad()
def high_relevance_mask(sim: torch.Tensor, threshold: float = 0.1, diagonal: bool = False) -> torch.Tensor:
    """High-relevance selection (HRS): which rows of a [B, G, G] similarity take part in the loss -> [B, G] bool.

    Similarities are min-max normalised over dim 1. `diagonal=True` scores row i by entry (i, i);
    the published code gathers with a [B, G, 1] index and so scores every row i by entry (i, 0).
    """
    lo, hi = sim.min(dim=1, keepdim=True)[0], sim.max(dim=1, keepdim=True)[0]
    norm = (sim - lo) / (hi - lo + 1e-6)
    score = torch.diagonal(norm, dim1=1, dim2=2) if diagonal else norm[:, :, 0]
    return score > threshold


def prototype_contrastive_loss(groups, prototypes, logit_scale, threshold=0.1, hrs_diagonal=False,
                               empty_as_zero=False):
    """Symmetric InfoNCE between each group and its matched prototype, over HRS-selected rows.

    groups, prototypes: [B, G, C] (row i of one is matched to row i of the other); logit_scale: log temperature.
    An empty selection gives NaN as in the published code, or 0 with `empty_as_zero`.
    """
    B, G, _ = groups.shape
    labels = torch.arange(G, device=groups.device).expand(B, G)
    groups, prototypes = F.normalize(groups, dim=-1), F.normalize(prototypes, dim=-1)
    sim = groups @ prototypes.transpose(1, 2)
    sim_t = prototypes @ groups.transpose(1, 2)
    scale = torch.clamp(logit_scale.exp(), max=100)
    loss = 0.
    for rows, mask in ((sim.transpose(1, 2), high_relevance_mask(sim, threshold, hrs_diagonal)),
                       (sim_t.transpose(1, 2), high_relevance_mask(sim_t, threshold, hrs_diagonal))):
        if empty_as_zero and not mask.any():
            loss = loss + 0. * rows.sum()
            continue
        loss = loss + F.cross_entropy(rows[mask] * scale, labels[mask])
    return loss
