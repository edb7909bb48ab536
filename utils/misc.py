"""Small run helpers: seeding and running averages."""
import random
from typing import Dict

import numpy as np
import torch

from .distributed import mean_over_ranks


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class AverageMeter:
    """Last value and running mean (weighted by n)."""

    def __init__(self):
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1):
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)


def meters_mean_over_ranks(meters: Dict[str, AverageMeter], device: torch.device) -> Dict[str, float]:
    """Running means of every meter, averaged over ranks (one all-reduce)."""
    if not meters:
        return {}
    names = sorted(meters)
    values = torch.tensor([meters[n].avg for n in names], dtype=torch.float64, device=device)
    return dict(zip(names, mean_over_ranks(values).tolist()))
