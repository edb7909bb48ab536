"""Timing and memory measurement that survives a shared, noisy machine.

Variants are run interleaved (A, B, C, A, B, C, ...) after a warm-up round, so that slow drifts of the machine's
load hit every variant alike; each variant's result is the median of its repeats.
"""
import statistics
import time
from typing import Callable, Dict, List

import torch
from torch.profiler import ProfilerActivity, profile


def elapsed(fn: Callable[[], object], device, clock: str = 'wall') -> float:
    """Seconds one call of `fn` takes: CUDA events on a GPU; on a CPU the wall clock, or with clock='process'
    the CPU time of this process (immune to other processes taking the cores, exact with one thread)."""
    if torch.device(device).type == 'cuda':
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    timer = time.process_time if clock == 'process' else time.perf_counter
    t = timer()
    fn()
    return timer() - t


def peak_memory_mib(fn: Callable[[], object], device, before: Callable[[], object] = None) -> float:
    """Peak of PyTorch's allocated memory during one call of `fn`, in MiB above what was allocated before it
    (`before` runs first, outside the measurement: e.g. dropping gradients, so that a step counts its own).

    CUDA: `torch.cuda.max_memory_allocated`. CPU: the allocation events of PyTorch's CPU allocator, recorded by
    the profiler (the process's resident set size cannot tell one call from the next: freed memory stays mapped).
    """
    device = torch.device(device)
    if before is not None:
        before()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == '[memory]' and e.device_type() == torch.autograd.DeviceType.CPU)
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return peak / 2 ** 20


def interleaved(variants: Dict[str, Callable[[], object]], device, repeats: int = 5, warmup: int = 1,
                clock: str = 'wall') -> Dict[str, dict]:
    """Runs every variant `warmup` times, then `repeats` rounds of one call each, in turn.

    -> {name: {'median_s': float, 'times_s': [per round]}}
    """
    for _ in range(warmup):
        for fn in variants.values():
            fn()
    times: Dict[str, List[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            times[name].append(elapsed(fn, device, clock))
    return {name: {'median_s': statistics.median(t), 'times_s': [round(x, 4) for x in t]} for name, t in times.items()}
