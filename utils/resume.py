"""Training checkpoints: where they live, which one a run resumes from, and what each kind restores.

<output>/ckpt_epoch_<n>/     full training state after epoch n (model.safetensors + state.pt), kept per max_kept
<output>/ckpt_best_<metric>/ the best checkpoint by one metric (records the metric, value, split and epoch)
<output>/ckpt_nonfinite_step_<s>/  written when a run stops on repeated non-finite losses

Resume (full state) restores model weights and buffers (PGSeg prototypes included), optimizer, lr schedule,
GradScaler, epoch and step. Init loads weights only (non-strict) and starts training from scratch.
"""
import os
import os.path as osp
import re
import shutil
from typing import List, Optional, Tuple

import torch

from .checkpoint import CheckpointError, is_complete, load_checkpoint, load_weights
from .logging import get_logger

EPOCH_PATTERN = re.compile(r'^ckpt_epoch_(\d+)$')


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
    logger.info(f'initialised weights from {path} ({reason}); training starts from scratch: '
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
