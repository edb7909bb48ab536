"""Training checkpoints: where they live, which one a run resumes from, and what each kind restores.

<output>/ckpt_epoch_<n>/     full training state after epoch n (model.safetensors + state.pt), kept per max_kept
<output>/ckpt_best_<metric>/ the best checkpoint by one metric (records the metric, value, split and epoch)
<output>/ckpt_nonfinite_step_<s>/  written when a run stops on repeated non-finite losses

Resume (full state) restores model weights and buffers (PGSeg prototypes included), optimizer, lr schedule,
GradScaler, epoch and step. Init loads weights only (non-strict) and starts training from scratch. A run's
`Checkpointer` writes all three kinds and chooses what to resume from.
"""
import os
import os.path as osp
import re
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from omegaconf import DictConfig

from .checkpoint import CheckpointError, is_complete, load_checkpoint, load_weights, save_checkpoint
from .distributed import barrier, is_main_process
from .logging import get_logger

EPOCH_PATTERN = re.compile(r'^ckpt_epoch_(\d+)$')


@dataclass
class TrainState:
    """What a checkpoint restores besides the modules: progress, best metrics, bad-data counts."""
    epoch: int = 0  # the epoch being run (after a restore: the first one to run)
    step: int = 0  # optimizer updates done so far
    best: Dict[str, dict] = field(default_factory=dict)
    nonfinite_in_a_row: int = 0
    nonfinite_total: int = 0
    bad_data: Dict[str, dict] = field(default_factory=dict)


def epoch_checkpoint_path(output: str, epoch: int) -> str:
    return osp.join(output, f'ckpt_epoch_{epoch}')


def epoch_checkpoints(output: str) -> List[Tuple[int, str]]:
    """[(epoch, path)] of complete epoch checkpoints in ``output``, newest first."""
    if not osp.isdir(output):
        return []
    found = []
    for name in os.listdir(output):
        match = EPOCH_PATTERN.match(name)
        path = osp.join(output, name)
        if match and is_complete(path):
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def is_full_state(state: dict) -> bool:
    """A checkpoint written by this project's training loop (not a weights-only or published file)."""
    return state.get('optimizer') is not None and state.get('step') is not None and state.get('epoch') is not None


def newest_loadable(output: str) -> Tuple[Optional[str], Optional[dict]]:
    """(path, content) of the newest epoch checkpoint that loads; unreadable ones are reported and skipped."""
    logger = get_logger()
    for _, path in epoch_checkpoints(output):
        try:
            state = load_checkpoint(path)
        except CheckpointError as e:
            logger.error(f'checkpoint {path} is unreadable ({e}); trying the previous one')
            continue
        if not is_full_state(state):
            logger.error(f'checkpoint {path} holds no training state; trying the previous one')
            continue
        return path, state
    return None, None


def prune(output: str, max_kept: int):
    """Delete all but the newest ``max_kept`` epoch checkpoints (max_kept <= 0 keeps everything)."""
    if max_kept <= 0:
        return
    for _, path in epoch_checkpoints(output)[max_kept:]:
        shutil.rmtree(path, ignore_errors=True)
        get_logger().info(f'removed old checkpoint {path} (checkpoint.max_kept={max_kept})')


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
    """Load a full training state; returns (next epoch, optimizer step)."""
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
    and TrainState, into the run folder cfg.output. Every rank calls its methods; rank 0 writes."""

    def __init__(self, cfg: DictConfig, model: torch.nn.Module, optimizer, scheduler, precision):
        self.cfg = cfg
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.precision = precision
        self.state = TrainState(epoch=int(cfg.train.start_epoch))

    def save(self, path: str, epoch: int, **extra) -> str:
        """Full training state after `epoch` (the last epoch completed) at `path`, plus `extra` entries;
        rank 0 writes, then every rank waits for it. -> path"""
        if is_main_process():
            state = self.state
            save_checkpoint(path, self.model.state_dict(), self.optimizer.state_dict(), self.scheduler.state_dict(),
                            self.precision.state_dict(),
                            extra={'epoch': epoch, 'step': state.step, 'config': self.cfg,
                                   'metrics': {'best': state.best, 'bad_data': state.bad_data,
                                               'nonfinite_total': state.nonfinite_total}, **extra})
        barrier()
        return path

    def save_epoch(self, epoch: int) -> str:
        """ckpt_epoch_<epoch>, then all but the newest checkpoint.max_kept epoch checkpoints are removed."""
        path = self.save(epoch_checkpoint_path(self.cfg.output, epoch), epoch)
        get_logger().info(f'saved {path}')
        if is_main_process():
            prune(self.cfg.output, int(self.cfg.checkpoint.max_kept))
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
            logger.info(f'resumed at epoch {state.epoch}, step {state.step}')
        elif cfg.checkpoint.init:
            init_weights(self.model, cfg.checkpoint.init)
        return state
