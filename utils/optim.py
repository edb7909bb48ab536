"""AdamW with two parameter groups: weight decay, and no weight decay.

By default the split is the published one (GroupViT's and PGSeg's ``set_weight_decay(model, {}, {})``): a trainable
parameter is exempt exactly when it is 1-D or its name ends in ``.bias``. Position embeddings, group tokens and the
0-d logit scales are therefore decayed. Two opt-in switches widen the exemption:

- ``train.optimizer.no_decay_keywords``: names containing one of these strings are exempt too (empty by default);
- ``train.optimizer.no_decay_scalars``: 0-d parameters (the logit scales) are exempt too (false by default).

``train.optimizer.no_decay_1d: false`` narrows it: 1-D parameters are decayed unless a name rule exempts them
(SegCLIP's split: only names containing ``bias``, with ``no_decay_keywords: [bias]``).

A method that defines ``param_lr_scale(name) -> float`` gets one group per (decay, factor): the group's ``lr_scale``
multiplies the scheduled learning rate (timm's schedulers apply it), e.g. SegCLIP's lower rate for its CLIP backbone.
Frozen parameters (``requires_grad`` false) belong to no group.
"""
from typing import Dict, List, Sequence

import torch
from omegaconf import DictConfig, OmegaConf


def skips_decay(name: str, param: torch.Tensor, keywords: Sequence[str] = (), scalars: bool = False,
                one_d: bool = True) -> bool:
    """True when the parameter gets no weight decay."""
    return ((one_d and param.ndim == 1) or name.endswith('.bias') or (scalars and param.ndim == 0)
            or any(k in name for k in keywords))


def param_groups(model: torch.nn.Module, weight_decay: float, keywords: Sequence[str] = (),
                 scalars: bool = False, one_d: bool = True) -> List[Dict]:
    """[{'params': decayed, 'weight_decay': wd, 'names': [...]}, {'params': exempt, 'weight_decay': 0, ...}], and
    per learning-rate factor of the model's `param_lr_scale` (when it has one) such a pair with 'lr_scale' set;
    the groups of factor 1 come first."""
    lr_scale = getattr(model, 'param_lr_scale', None)
    groups: Dict[tuple, Dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        decayed = not skips_decay(name, param, keywords, scalars, one_d)
        scale = 1.0 if lr_scale is None else float(lr_scale(name))
        group = groups.setdefault((scale != 1.0, -scale, not decayed), {
            'params': [], 'names': [], 'weight_decay': weight_decay if decayed else 0.0,
            **({} if lr_scale is None else {'lr_scale': scale})})
        group['params'].append(param)
        group['names'].append(name)
    if lr_scale is None:
        empty = {'params': [], 'names': []}
        return [groups.get((False, -1.0, False), {**empty, 'weight_decay': weight_decay}),
                groups.get((False, -1.0, True), {**empty, 'weight_decay': 0.0})]
    return [groups[key] for key in sorted(groups)]


def build_optimizer(train_cfg: DictConfig, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """AdamW over ``param_groups``; each group keeps the parameter names under 'names'."""
    name = train_cfg.optimizer.name
    if name != 'adamw':
        raise ValueError(f"train.optimizer.name: only 'adamw' is supported, got {name!r}")
    keywords = OmegaConf.select(train_cfg, 'optimizer.no_decay_keywords', default=None) or ()
    scalars = bool(OmegaConf.select(train_cfg, 'optimizer.no_decay_scalars', default=False))
    one_d = bool(OmegaConf.select(train_cfg, 'optimizer.no_decay_1d', default=True))
    groups = param_groups(model, float(train_cfg.weight_decay), tuple(keywords), scalars, one_d)
    # fused: one kernel over all parameters instead of ~10 per tensor (CPU and CUDA; measured in benchmarks/NOTES.md)
    return torch.optim.AdamW([g for g in groups if g['params']], lr=lr, eps=float(train_cfg.optimizer.eps),
                             betas=tuple(train_cfg.optimizer.betas), fused=True)
