"""Training checkpoints: where they live, which one a run resumes from, and what each kind restores.

<output>/ckpt_epoch_<n>/     full training state after epoch n (model.safetensors + state.pt), kept per max_kept
<output>/ckpt_step_<s>/      full training state after optimizer step s, in the middle of an epoch, with the data
                             position (checkpoint.save_every_steps / save_every_minutes, preemption), kept per
                             max_kept_steps
<output>/ckpt_best_<metric>/ the best checkpoint by one metric (records the metric, value, split and epoch)
<output>/ckpt_nonfinite_step_<s>/  written when a run stops on repeated non-finite losses

Resume (full state) restores model weights and buffers (PGSeg prototypes included), optimizer, lr schedule,
GradScaler, epoch and step, and from a step checkpoint the batch within the epoch and each rank's data position.
Init loads weights only (non-strict) and starts training from scratch. A run's `Checkpointer` writes every kind and
chooses what to resume from: the loadable epoch or step checkpoint with the most training behind it.
"""
import os
import os.path as osp
import re
import shutil
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

from .checkpoint import (CheckpointError, find_latest_checkpoint, is_complete, load_checkpoint, load_weights,
                         save_checkpoint)
from .distributed import from_main_process, gather_objects, is_main_process
from .logging import get_logger

EPOCH_PATTERN = re.compile(r'^ckpt_epoch_(\d+)$')
STEP_PATTERN = re.compile(r'^ckpt_step_(\d+)$')


@dataclass
class TrainState:
    """What a checkpoint restores besides the modules: progress, best metrics, bad-data counts."""
    epoch: int = 0  # the epoch being run (after a restore: the first one to run)
    step: int = 0  # optimizer updates done so far
    batch: int = 0  # batches of `epoch` trained before a restore from a step checkpoint
    data_position: Optional[dict] = None  # a step checkpoint's data position: TrainData.layout, every rank's position
    best: Dict[str, dict] = field(default_factory=dict)
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    bad_data: Dict[str, dict] = field(default_factory=dict)


def epoch_checkpoint_path(output: str, epoch: int) -> str:
    return osp.join(output, f'ckpt_epoch_{epoch}')


def step_checkpoint_path(output: str, step: int) -> str:
    return osp.join(output, f'ckpt_step_{step}')


def _checkpoints(output: str, pattern: re.Pattern, complete: bool = True) -> List[Tuple[int, str]]:
    """[(number in the name, path)] of the checkpoints in ``output`` whose name matches, newest first; complete=False
    also lists torn ones."""
    if not osp.isdir(output):
        return []
    found = []
    for name in os.listdir(output):
        match = pattern.match(name)
        path = osp.join(output, name)
        if match and (not complete or is_complete(path)):
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def epoch_checkpoints(output: str) -> List[Tuple[int, str]]:
    """[(epoch, path)] of complete epoch checkpoints in ``output``, newest first."""
    return _checkpoints(output, EPOCH_PATTERN)


def is_full_state(state: dict) -> bool:
    """A checkpoint written by this project's training loop (not a weights-only or published file)."""
    return state.get('optimizer') is not None and state.get('step') is not None and state.get('epoch') is not None


def _newest_loadable_of(output: str, pattern: re.Pattern) -> Tuple[Optional[str], Optional[dict]]:
    """(path, content) of the newest checkpoint of one kind that loads; torn and unreadable ones are reported."""
    logger = get_logger()
    for _, path in _checkpoints(output, pattern, complete=False):
        if not is_complete(path):
            logger.warning(f'checkpoint {path} is incomplete (a file is missing or truncated); trying the previous one')
            continue
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            logger.warning(f'checkpoint {path} is unreadable ({e}); trying the previous one')
            continue
        if not is_full_state(state):
            logger.warning(f'checkpoint {path} holds no training state; trying the previous one')
            continue
        return path, state
    return None, None


def training_progress(state: dict) -> Tuple[int, int]:
    """How much training a checkpoint holds: (optimizer steps, 1 for an epoch end); an epoch checkpoint wins over a
    step checkpoint of the same step (it also closed the epoch)."""
    return int(state['step']), int(state.get('data_position') is None)


def newest_loadable(output: str) -> Tuple[Optional[str], Optional[dict]]:
    """(path, content) of the epoch or step checkpoint with the most training behind it among those that load;
    unreadable and torn ones are reported and skipped."""
    found = [_newest_loadable_of(output, pattern) for pattern in (EPOCH_PATTERN, STEP_PATTERN)]
    found = [(path, state) for path, state in found if path is not None]
    if not found:
        return None, None
    return max(found, key=lambda item: training_progress(item[1]))


def prune(output: str, max_kept: int, pattern: re.Pattern = EPOCH_PATTERN, key: str = 'checkpoint.max_kept'):
    """Delete all but the newest ``max_kept`` epoch (or ``pattern``) checkpoints (max_kept <= 0 keeps everything)."""
    if max_kept <= 0:
        return
    for _, path in _checkpoints(output, pattern)[max_kept:]:
        shutil.rmtree(path, ignore_errors=True)
        get_logger().info(f'removed old checkpoint {path} ({key}={max_kept})')


def resume_point(state: TrainState, data, rank: int) -> Tuple[int, Optional[Dict[int, int]], Optional[dict]]:
    """Where training starts in state.epoch: (batches already trained, this rank's loader worker positions, the
    epoch's bad-data counts so far: on rank 0 only, since the epoch's end sums over ranks). From a step checkpoint
    recorded with another layout (processes, loader workers, batch size, shard sampling) the epoch continues after
    the same batch but from the start of its data stream, with a warning."""
    position = state.data_position
    if not position:
        return 0, None, None
    bad_before = position.get('bad_data_in_epoch') if rank == 0 else None
    if position.get('layout') == data.layout():
        return state.batch, position['ranks'][rank], bad_before
    get_logger().warning(
        f"the data position in the step checkpoint was recorded with {position.get('layout')}, this run has "
        f'{data.layout()}: epoch {state.epoch} continues after batch {state.batch} but reads its data from the start, '
        'so some of its samples are seen twice and others not at all')
    return state.batch, None, bad_before


def init_weights(model: torch.nn.Module, path: str, reason: str = 'checkpoint.init'):
    """Weights-only initialisation (strict=False); names the model has but the file lacks are listed as new."""
    logger = get_logger()
    missing, unexpected = load_weights(model, path, strict=False)
    start = '' if reason == '--eval' else '; training starts from scratch (no optimizer state, epoch 0)'
    logger.info(f'initialised weights from {path} ({reason}){start}: '
                f'{len(missing)} names newly initialised, {len(unexpected)} names in the file unused')
    if missing:
        logger.info('newly initialised: ' + ', '.join(missing))
    if unexpected:
        logger.warning('not in the model: ' + ', '.join(unexpected))


def restore(state: dict, model: torch.nn.Module, optimizer, scheduler, precision) -> Tuple[int, int]:
    """Load a full training state; returns (the epoch after the last completed one, optimizer step)."""
    model.load_state_dict(state['model'], strict=True)
    optimizer.load_state_dict(state['optimizer'])
    if state.get('lr_scheduler') is not None:
        scheduler.load_state_dict(state['lr_scheduler'])
    precision.load_state_dict(state.get('scaler'))
    step = int(state['step'])
    scheduler.step_update(step)
    return int(state['epoch']) + 1, step


class Checkpointer:
    """Writes and restores the training state of one run: the model, optimizer, lr schedule, precision (GradScaler)
    and TrainState, into the run folder cfg.output. Every rank calls its methods; rank 0 writes.

    data: the run's TrainData, whose position every step checkpoint records (None: step checkpoints hold none)."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, optimizer, scheduler, precision, data=None):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.data = data
        self.state = TrainState(epoch=int(cfg.train.start_epoch))
        self.every_steps = int(OmegaConf.select(cfg, 'checkpoint.save_every_steps', default=0) or 0)
        self.every_minutes = float(OmegaConf.select(cfg, 'checkpoint.save_every_minutes', default=0) or 0)
        self.saves_steps = self.every_steps > 0 or self.every_minutes > 0
        self.last_save = time.monotonic()

    def save(self, path: str, epoch: int, **extra) -> str:
        """Full training state after `epoch` (the last epoch completed) at `path`, plus `extra` entries;
        rank 0 writes, then every rank learns the outcome. -> path; CheckpointError on every rank when the write
        failed (full disk, quota, I/O error), naming the previous checkpoint, which the atomic save left intact."""
        failure = None
        if is_main_process():
            state = self.state
            try:
                save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(),
                                self.scheduler.state_dict(), self.precision.state_dict(),
                                extra={'epoch': epoch, 'step': state.step, 'config': self.cfg,
                                       'metrics': {'best': state.best, 'bad_data': state.bad_data,
                                                   'nonfinite_total': state.nonfinite_total}, **extra})
            except OSError as e:
                previous = find_latest_checkpoint(self.cfg.output)
                failure = (f'cannot write checkpoint {path}: {e.strerror or e}; '
                           + (f'the previous checkpoint {previous} is intact' if previous
                              else f'no earlier checkpoint in {self.cfg.output}'))
            self.last_save = time.monotonic()
        failure = from_main_process(failure)
        if failure:
            raise CheckpointError(failure)
        return path

    def save_epoch(self, epoch: int) -> str:
        """ckpt_epoch_<epoch>, then all but the newest checkpoint.max_kept epoch checkpoints are removed."""
        path = self.save(epoch_checkpoint_path(self.cfg.output, epoch), epoch)
        get_logger().info(f'saved {path}')
        if is_main_process():
            prune(self.cfg.output, int(self.cfg.checkpoint.max_kept))
        return path

    def step_checkpoint_due(self, step: int) -> bool:
        """checkpoint.save_every_steps divides `step`, or (rank 0's clock) save_every_minutes have passed since the
        last save; the caller makes the answer the same on every rank."""
        if self.every_steps > 0 and step % self.every_steps == 0:
            return True
        return self.every_minutes > 0 and time.monotonic() - self.last_save >= 60 * self.every_minutes

    def save_step(self, batches: int, bad_data_in_epoch: Dict[str, dict]) -> str:
        """ckpt_step_<step>: the state after `batches` batches of epoch state.epoch, with where every rank's data
        stands (TrainData.position, right after the last trained batch) and the bad data counted so far in the epoch
        (summed over ranks); then all but the newest checkpoint.max_kept_steps step checkpoints are removed."""
        state = self.state
        position = {'epoch': state.epoch, 'batches': batches, 'bad_data_in_epoch': bad_data_in_epoch}
        if self.data is not None:
            ranks = gather_objects(self.data.position())
            position.update(layout=self.data.layout(), ranks=[p['workers'] for p in ranks])
        path = self.save(step_checkpoint_path(self.cfg.output, state.step), state.epoch - 1, data_position=position)
        get_logger().info(f'saved {path} (epoch {state.epoch}, batch {batches})')
        if is_main_process():
            prune(self.cfg.output, int(OmegaConf.select(self.cfg, 'checkpoint.max_kept_steps', default=2)),
                  STEP_PATTERN, 'checkpoint.max_kept_steps')
        return path

    def save_nonfinite(self) -> str:
        """ckpt_nonfinite_step_<step>: the state before a run of non-finite steps (state.epoch - 1 completed)."""
        return self.save(osp.join(self.cfg.output, f'ckpt_nonfinite_step_{self.state.step}'), self.state.epoch - 1)

    def resume_or_init(self) -> TrainState:
        """auto-resume > checkpoint.resume (full state, or init when weights-only) > checkpoint.init; -> the state
        training continues from (also self.state)."""
        cfg, logger, state = self.cfg, get_logger(), self.state
        path, content = newest_loadable(cfg.output) if cfg.checkpoint.auto_resume else (None, None)
        if path is None and cfg.checkpoint.resume:
            content = load_checkpoint(cfg.checkpoint.resume)
            path = cfg.checkpoint.resume
            if cfg.checkpoint.resume_weights_only or not is_full_state(content):
                why = ('checkpoint.resume_weights_only is set' if cfg.checkpoint.resume_weights_only
                       else 'it holds weights only (no training state of this project)')
                logger.info(f'checkpoint.resume {path}: treated as init because {why}')
                init_weights(self.model, path, reason='checkpoint.resume as init')
                return state
        elif path is not None and cfg.checkpoint.resume:
            logger.info(f'auto-resume: a checkpoint in {cfg.output} takes precedence over checkpoint.resume')
        if path is not None:
            logger.info(f'resuming from {path}')
            state.epoch, state.step = restore(content, self.model, self.optimizer, self.scheduler, self.precision)
            metrics = content.get('metrics') or {}
            state.best = dict(metrics.get('best') or {})
            state.bad_data = dict(metrics.get('bad_data') or {})
            state.nonfinite_total = int(metrics.get('nonfinite_total') or 0)
            position = content.get('data_position')
            if position is None:
                logger.info(f'resumed at epoch {state.epoch}, step {state.step}')
            else:
                state.epoch, state.batch = int(position['epoch']), int(position['batches'])
                state.data_position = position
                logger.info(f'resumed in epoch {state.epoch} after batch {state.batch}, step {state.step}')
        elif cfg.checkpoint.init:
            init_weights(self.model, cfg.checkpoint.init)
        return state
