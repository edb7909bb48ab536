"""The training epoch: micro-batches, gradient accumulation, non-finite steps, progress logs, step checkpoints and
preemption."""
import contextlib
import datetime
import time
from dataclasses import dataclass
from typing import Dict, Iterator, Optional, TextIO

import torch
from omegaconf import DictConfig

from datasets.shards import format_counts, merge_counts, sum_counts_over_ranks
from models.base import map_tokens, training_loss

from .distributed import get_world_size, true_on_any_rank, true_on_every_rank
from .logging import MetricWriter, get_logger
from .misc import AverageMeter, meters_mean_over_ranks
from .precision import Precision
from .resume import Checkpointer, TrainState
from .signals import PreemptionSignals


class NonFiniteLossError(RuntimeError):
    """Too many optimizer updates in a row had a non-finite loss or gradient."""


class Preempted(Exception):
    """A preemption signal stopped training after a step checkpoint (not an error: the job is to be requeued)."""


@dataclass
class Trainer:
    """Everything one training epoch needs."""
    cfg: DictConfig
    model: torch.nn.Module  # the module itself (no DDP wrapper)
    train_model: torch.nn.Module  # what forward runs through (DDP wrapper or the module)
    optimizer: torch.optim.Optimizer
    scheduler: object
    precision: Precision
    batches: Iterator[dict]
    steps_per_epoch: int  # micro-batches per epoch
    accumulation: int
    device: torch.device
    writer: MetricWriter
    state: TrainState
    nonfinite_patience: int = 10
    checkpointer: Optional[Checkpointer] = None  # step checkpoints; the state when repeated non-finite steps stop
    preemption: Optional[PreemptionSignals] = None  # read after each optimizer update
    sample_record: Optional[TextIO] = None  # train.record_samples: '<epoch> <batch> <sample key>' lines


def all_finite(value: torch.Tensor) -> bool:
    """True when the value is finite on every rank (the same answer everywhere, so ranks stay in step)."""
    return true_on_every_rank(bool(torch.isfinite(value.detach()).all()), value.device)


def batch_to_device(batch: dict, device: torch.device) -> dict:
    """The batch's tensors and dicts of tensors (e.g. BERT token dicts) on `device`; other entries are dropped."""
    return {k: map_tokens(lambda t: t.to(device, non_blocking=True), v) for k, v in batch.items()
            if isinstance(v, torch.Tensor) or (isinstance(v, dict) and v and all(isinstance(t, torch.Tensor)
                                                                                 for t in v.values()))}


def _forward_backward(t: Trainer, inputs: dict, sync: bool):
    """One micro-batch: forward, finiteness check over ranks, backward of loss / accumulation.

    inputs: the batch's tensors, passed to the method's forward_train by name; the loss is the sum of the terms
    whose name contains 'loss' (models.base.training_loss), the others are only logged.
    Returns (every term and 'total_loss', finite). When the loss is non-finite the module's buffers are put back
    as they were before the forward (PGSeg's prototypes and batch-norm statistics update during the forward and
    would otherwise keep the NaN after the optimizer step is skipped).
    """
    buffers = {name: b.detach().clone() for name, b in t.model.named_buffers()}
    with (contextlib.nullcontext() if sync else t.train_model.no_sync()):
        with t.precision.autocast():
            losses = t.train_model(**inputs)
        loss = training_loss(losses)
        finite = all_finite(loss)
        t.precision.backward(loss / t.accumulation)
    if not finite:
        with torch.no_grad():
            for name, b in t.model.named_buffers():
                b.copy_(buffers[name])
    terms = {name: float(v.detach()) for name, v in losses.items()}
    terms['total_loss'] = float(loss.detach())
    return terms, finite


def _optimizer_update(t: Trainer) -> float:
    """Unscale, clip, step (unless the gradient is non-finite). Returns the gradient norm before clipping."""
    t.precision.unscale(t.optimizer)
    params = [p for g in t.optimizer.param_groups for p in g['params'] if p.grad is not None]
    clip = t.cfg.train.clip_grad
    grad_norm = torch.nn.utils.clip_grad_norm_(params, clip if clip else float('inf'))
    if t.precision.scaler is not None or torch.isfinite(grad_norm):
        t.precision.step(t.optimizer)  # GradScaler skips non-finite fp16 steps itself and lowers its scale
    return float(grad_norm)


def _record_nonfinite(t: Trainer, epoch: int, idx: int, terms: Dict[str, float], what: str):
    logger = get_logger()
    t.state.nonfinite_in_a_row += 1
    t.state.nonfinite_total += 1
    shown = ' '.join(f'{k} {v:.4g}' for k, v in terms.items())
    logger.warning(f'non-finite {what} at step {t.state.step} (epoch {epoch}, iter {idx}): {shown}; optimizer '
                   f'step skipped ({t.state.nonfinite_in_a_row} in a row, patience {t.nonfinite_patience})')
    if t.state.nonfinite_in_a_row >= t.nonfinite_patience:
        saved = t.checkpointer.save_nonfinite() if t.checkpointer else None
        raise NonFiniteLossError(
            f'stopping: {t.state.nonfinite_in_a_row} optimizer steps in a row had a non-finite {what} '
            f'(last at step {t.state.step}, epoch {epoch}); model and optimizer state before them saved to {saved}. '
            'Lower train.base_lr, raise train.warmup_epochs, or use --amp-opt-level O0/O2.')


def _save_or_stop(t: Trainer, epoch: int, batches: int, bad_this_epoch: Dict[str, dict]):
    """After an optimizer update (`batches` of the epoch trained): a step checkpoint when one is due; a step
    checkpoint and Preempted when a preemption signal came. Decided the same on every rank (one all-reduce)."""
    if t.checkpointer is None or (t.preemption is None and not t.checkpointer.saves_steps):
        return
    received = t.preemption.received if t.preemption is not None else None
    due = batches < t.steps_per_epoch and t.checkpointer.step_checkpoint_due(t.state.step)
    stop, save = true_on_any_rank([received is not None, due], t.device)
    if not (stop or save):
        return
    path = t.checkpointer.save_step(batches, sum_counts_over_ranks(bad_this_epoch))
    if stop:
        raise Preempted(f'stopping on {received or "a preemption signal to another rank"} after step {t.state.step} '
                        f'(epoch {epoch}, batch {batches}): the same command resumes from {path}')


def _record_samples(t: Trainer, epoch: int, idx: int, batch: dict):
    t.sample_record.write(''.join(f'{epoch} {idx} {key}\n' for key in batch['keys']))
    t.sample_record.flush()


def train_one_epoch(t: Trainer, epoch: int, start_batch: int = 0,
                    bad_before: Optional[Dict[str, dict]] = None) -> Dict[str, float]:
    """Run micro-batches start_batch..steps_per_epoch-1 (start_batch > 0: the epoch resumed from a step checkpoint,
    whose bad-data counts of the batches before are `bad_before`, held by one rank); returns the mean loss terms
    of the batches run (averaged over ranks)."""
    logger = get_logger()
    cfg = t.cfg
    t.train_model.train()
    t.optimizer.zero_grad(set_to_none=True)
    meters: Dict[str, AverageMeter] = {}  # epoch means (the log line)
    window: Dict[str, AverageMeter] = {}  # means since the last log line (tensorboard and the loss plot)
    batch_time, grad_meter = AverageMeter(), AverageMeter()
    global_batch = int(cfg.data.batch_size) * get_world_size()
    bad_this_epoch: Dict[str, dict] = merge_counts({}, bad_before or {})
    update_is_bad = False
    start = end = time.time()
    for idx in range(start_batch, t.steps_per_epoch):
        batch = next(t.batches)
        if t.sample_record is not None:
            _record_samples(t, epoch, idx, batch)
        merge_counts(bad_this_epoch, batch.get('bad') or {})
        inputs = batch_to_device(batch, t.device)
        if idx % t.accumulation == 0:
            t.model.begin_step(t.state.step)
        boundary = (idx + 1) % t.accumulation == 0 or idx + 1 == t.steps_per_epoch
        sync = boundary or not isinstance(t.train_model, torch.nn.parallel.DistributedDataParallel)
        terms, finite = _forward_backward(t, inputs, sync)
        if finite:
            for name, value in terms.items():
                meters.setdefault(name, AverageMeter()).update(value, inputs['image'].shape[0])
                window.setdefault(name, AverageMeter()).update(value, inputs['image'].shape[0])
        update_is_bad |= not finite
        if not boundary:
            continue
        if update_is_bad:
            t.optimizer.zero_grad(set_to_none=True)
            t.state.step += 1
            t.scheduler.step_update(t.state.step)
            update_is_bad = False
            end = time.time()
            _record_nonfinite(t, epoch, idx, terms, 'loss')
            _save_or_stop(t, epoch, idx + 1, bad_this_epoch)
            continue
        grad_norm = _optimizer_update(t)
        t.optimizer.zero_grad(set_to_none=True)
        t.model.end_step(t.state.step)
        t.state.step += 1
        t.scheduler.step_update(t.state.step)
        if t.precision.scaler is None and not torch.isfinite(torch.tensor(grad_norm)):
            _record_nonfinite(t, epoch, idx, terms, 'gradient')
        else:
            t.state.nonfinite_in_a_row = 0
            grad_meter.update(grad_norm)
        batch_time.update(time.time() - end)
        end = time.time()
        if idx % cfg.print_freq == 0 or idx + 1 == t.steps_per_epoch:
            _log_progress(t, epoch, idx, meters, window, batch_time, grad_meter, global_batch * t.accumulation)
            window = {}
        _save_or_stop(t, epoch, idx + 1, bad_this_epoch)
    averages = meters_mean_over_ranks(meters, t.device)
    bad = sum_counts_over_ranks(bad_this_epoch)
    merge_counts(t.state.bad_data, bad)
    resumed = f' (batches {start_batch + 1}..{t.steps_per_epoch}: resumed mid-epoch)' if start_batch else ''
    logger.info(f'epoch {epoch} done in {datetime.timedelta(seconds=int(time.time() - start))}{resumed}: '
                + ' '.join(f'{k} {v:.4f}' for k, v in averages.items()))
    logger.info(f'bad training data in epoch {epoch}: {format_counts(bad)}; '
                f'whole run: {format_counts(t.state.bad_data)}')
    t.writer.scalars({f'epoch/{k}': v for k, v in averages.items()}, t.state.step)
    return averages


def _log_progress(t: Trainer, epoch: int, idx: int, meters, window, batch_time: AverageMeter,
                  grad_meter: AverageMeter, images_per_update: int):
    cfg = t.cfg
    means = meters_mean_over_ranks(meters, t.device)
    recent = meters_mean_over_ranks(window, t.device)
    lr = t.optimizer.param_groups[0]['lr']
    updates_left_epoch = (t.steps_per_epoch - idx - 1) // t.accumulation
    updates_left = updates_left_epoch + (cfg.train.epochs - epoch - 1) * (t.steps_per_epoch // t.accumulation)
    eta_epoch = datetime.timedelta(seconds=int(batch_time.avg * updates_left_epoch))
    eta_all = datetime.timedelta(seconds=int(batch_time.avg * updates_left))
    speed = images_per_update / max(batch_time.val, 1e-9)
    terms = '  '.join(f'{k} {meters[k].val:.4f} ({means[k]:.4f})' for k in sorted(meters))
    get_logger().info(
        f'Train [{epoch}/{cfg.train.epochs}][{idx + 1}/{t.steps_per_epoch}] step {t.state.step}  lr {lr:.3e}  '
        f'{terms}  grad_norm {grad_meter.val:.3f}  {speed:.1f} img/s  eta {eta_epoch} (run {eta_all})')
    scalars = {f'train/{k}': v for k, v in recent.items()}
    scalars.update({'train/lr': lr, 'train/grad_norm': grad_meter.val, 'train/images_per_s': speed})
    t.writer.scalars(scalars, t.state.step)
