"""Learning rates: batch-size scaling and the per-step cosine schedule with linear warm-up (timm)."""
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from timm.scheduler.cosine_lr import CosineLRScheduler


@dataclass
class ScaledLR:
    """The learning rates a run actually uses, and the batch they were derived from."""
    global_batch: int
    factor: float
    base_lr: float
    warmup_lr: float
    min_lr: float

    def describe(self) -> str:
        return (f'effective global batch {self.global_batch}; lr x{self.factor:g}: base_lr {self.base_lr:.3g}, '
                f'warmup_lr {self.warmup_lr:.3g}, min_lr {self.min_lr:.3g}')


def accumulation(train_cfg: DictConfig) -> int:
    """train.accumulation_steps, where 0 (the published default) means 1."""
    return max(int(train_cfg.accumulation_steps), 1)


def scale_lr(train_cfg: DictConfig, batch_size: int, world_size: int) -> ScaledLR:
    """base_lr, warmup_lr and min_lr x (batch_size * world_size / train.lr_scaling_batch) x accumulation.

    As in the published GroupViT and PGSeg code: the batch factor applies when ``lr_scaling_batch`` is set (GroupViT:
    4096; PGSeg: null, no batch scaling), the accumulation factor when ``train.lr_scale_by_accumulation`` is true.
    """
    accum = accumulation(train_cfg)
    reference = train_cfg.lr_scaling_batch
    by_accumulation = accum if OmegaConf.select(train_cfg, 'lr_scale_by_accumulation', default=True) else 1

    def scaled(rate) -> float:  # the published order of operations, so that rates match to the last bit
        rate = float(rate) * batch_size * world_size / float(reference) if reference else float(rate)
        return rate * by_accumulation
    factor = (batch_size * world_size / float(reference) if reference else 1.0) * by_accumulation
    return ScaledLR(batch_size * world_size * accum, factor, scaled(train_cfg.base_lr), scaled(train_cfg.warmup_lr),
                    scaled(train_cfg.min_lr))


def build_scheduler(train_cfg: DictConfig, optimizer: torch.optim.Optimizer, lrs: ScaledLR,
                    updates_per_epoch: int) -> CosineLRScheduler:
    """Cosine from base_lr to min_lr over all optimizer updates, after warmup_epochs of linear warm-up from
    warmup_lr (``lr_scheduler.warmup_prefix``: the cosine starts when the warm-up ends). Call
    ``step_update(num_updates)`` after every optimizer update. A param group's ``lr_scale`` multiplies its rate."""
    name = train_cfg.lr_scheduler.name
    if name != 'cosine':
        raise ValueError(f"train.lr_scheduler.name: only 'cosine' is supported, got {name!r}")
    for group in optimizer.param_groups:
        group['lr'] = lrs.base_lr
        group['initial_lr'] = lrs.base_lr
    total, warmup = int(train_cfg.epochs * updates_per_epoch), int(train_cfg.warmup_epochs * updates_per_epoch)
    prefix = bool(OmegaConf.select(train_cfg, 'lr_scheduler.warmup_prefix', default=False))
    return CosineLRScheduler(
        optimizer,
        t_initial=max(total - warmup, 1) if prefix else total,
        lr_min=lrs.min_lr,
        warmup_lr_init=lrs.warmup_lr,
        warmup_t=warmup,
        warmup_prefix=prefix,
        cycle_limit=1,
        t_in_epochs=False,
    )
