"""Small run helpers: process-group setup, seeding, running averages."""
import os
import random
from typing import Dict

import numpy as np
import torch
import torch.distributed as dist


def init_distributed() -> torch.device:
    """Join the process group when launched by torchrun (RANK/WORLD_SIZE set); return this process's device.

    NCCL with CUDA, gloo otherwise. A plain `python main_pg_seg.py ...` runs as a single process, no group.
    """
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = torch.cuda.is_available()
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo')
    return device


def close_distributed(wait_for_others: bool = True):
    """Leave the process group. `wait_for_others`: meet every rank first, so that no rank closes its gloo
    connections while a peer still uses them (the peer then aborts); False on an error path, where the other
    ranks may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


def barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel when more than one process runs, the model itself otherwise.

    Buffers are synchronised from rank 0 at construction only: the projectors' batch norms compute global
    statistics themselves and PGSeg's prototype buffers are updated with the mean over ranks.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == 'cuda' else None, forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters)


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
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return dict(zip(names, values.tolist()))
