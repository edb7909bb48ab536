"""AdamW with parameter groups: no weight decay on norms, biases, position embeddings, group tokens, logit scales.

The published code exempts 1-D parameters and biases only (so its position embeddings, group tokens and the 0-d
logit scales were decayed); here the exemption list is ``train.optimizer.no_decay_keywords`` (names containing one
of the keywords), on top of every parameter with fewer than 2 dimensions and every ``.bias``.
"""
from typing import Dict, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

NO_DECAY_KEYWORDS = ('pos_embed', 'group_token', 'logit_scale')


def skips_decay(name: str, param: torch.Tensor, keywords: Sequence[str] = NO_DECAY_KEYWORDS) -> bool:
    return param.ndim <= 1 or name.endswith('.bias') or any(k in name for k in keywords)


def param_groups(model: torch.nn.Module, weight_decay: float,
                 keywords: Sequence[str] = NO_DECAY_KEYWORDS) -> List[Dict]:
    """[{'params': decayed, 'weight_decay': wd, 'names': [...]}, {'params': exempt, 'weight_decay': 0, ...}]"""
    decay, no_decay = {'params': [], 'names': []}, {'params': [], 'names': []}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        group = no_decay if skips_decay(name, param, keywords) else decay
        group['params'].append(param)
        group['names'].append(name)
    return [{**decay, 'weight_decay': weight_decay}, {**no_decay, 'weight_decay': 0.0}]


def build_optimizer(train_cfg: DictConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    name = train_cfg.optimizer.name
    if name != 'adamw':
        raise ValueError(f"train.optimizer.name: only 'adamw' is supported, got {name!r}")
    keywords = OmegaConf.select(train_cfg, 'optimizer.no_decay_keywords', default=NO_DECAY_KEYWORDS)
    groups = param_groups(model, float(train_cfg.weight_decay), tuple(keywords))
    # fused: one kernel over all parameters instead of ~10 per tensor (CPU and CUDA; measured in benchmarks/NOTES.md)
    return torch.optim.AdamW([g for g in groups if g['params']], lr=lr, eps=float(train_cfg.optimizer.eps),
                             betas=tuple(train_cfg.optimizer.betas), fused=True)
