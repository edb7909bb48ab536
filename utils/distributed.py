"""torch.distributed helpers that also work in a single process without an initialised group."""
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_nn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` [b, ...] from every rank along dim 0 -> [world * b, ...]; gradients flow back to each rank."""
    if get_world_size() == 1:
        return x
    return torch.cat(dist_nn.all_gather(x.contiguous()), dim=0)


@torch.no_grad()
def all_gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Like `all_gather_with_grad` but detached (for buffers and statistics)."""
    if get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out, dim=0)


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of a tensor over ranks (returns a new tensor; the input is untouched)."""
    if get_world_size() == 1:
        return x.clone()
    x = x.clone()
    dist.all_reduce(x)
    return x / get_world_size()


def local_rank_from_env() -> int:
    return int(os.environ.get('LOCAL_RANK', 0))
