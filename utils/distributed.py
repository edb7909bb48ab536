"""Everything distributed: the process group's start and close, barrier, DDP wrapping, reductions and gathers.

Every helper also works in a single process without a group (world size 1, rank 0).
"""
import os
from datetime import timedelta
from typing import List, Optional

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


def backend() -> Optional[str]:
    """'nccl' or 'gloo' inside a process group, None without one."""
    return dist.get_backend() if is_distributed() else None


def init_distributed(timeout: Optional[timedelta] = None) -> torch.device:
    """Join the process group when launched by torchrun (RANK and WORLD_SIZE set, also for one process);
    -> this process's device.

    NCCL with CUDA, gloo otherwise. A plain `python main_pg_seg.py ...` runs as a single process, no group.
    timeout: how long a collective waits for the other ranks (None: torch's default for the backend).
    """
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    use_cuda = torch.cuda.is_available()
    device = torch.device('cuda', local_rank) if use_cuda else torch.device('cpu')
    if use_cuda:
        torch.cuda.set_device(device)
    if 'RANK' in os.environ and 'WORLD_SIZE' in os.environ and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo', timeout=timeout)
    return device


def close_distributed(wait_for_others: bool = True):
    """Leave the process group. `wait_for_others`: meet every rank first, so that no rank closes its gloo
    connections while a peer still uses them (the peer then aborts); False on an error path, where the other
    ranks may never arrive."""
    if is_distributed():
        if wait_for_others:
            dist.barrier()
        dist.destroy_process_group()


def barrier():
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """DistributedDataParallel when more than one process runs, the model itself otherwise.

    Buffers are synchronised from rank 0 at construction only: the projectors' batch norms compute global
    statistics themselves and PGSeg's prototype buffers are updated with the mean over ranks.
    """
    if get_world_size() == 1:
        return model
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == 'cuda' else None, forward_sync_buffers=False,
        find_unused_parameters=find_unused_parameters)


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


def gather_objects(obj) -> List:
    """Any picklable object of every rank -> [object of rank 0, object of rank 1, ...] on every rank."""
    if get_world_size() == 1:
        return [obj]
    gathered = [None] * get_world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def sum_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Element-wise sum of `x` over ranks, in place; returns `x`."""
    if is_distributed():
        dist.all_reduce(x)
    return x


def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of `x` over ranks, in place; returns `x`."""
    return sum_over_ranks(x).div_(get_world_size())


def true_on_every_rank(flag: bool, device: torch.device) -> bool:
    """The same answer on every rank: True when `flag` is True on all of them."""
    value = torch.tensor([float(flag)], device=device)
    if is_distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)
