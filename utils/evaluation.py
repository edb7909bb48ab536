"""Evaluation after a training epoch: zero-shot classification and segmentation, the best checkpoints."""
import os.path as osp
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from .engine import Trainer
from .logging import get_logger
from .resume import Checkpointer
from .zero_shot import ClassPrompts, run_cls_eval


def seg_split(cfg) -> str:
    """The segmentation split that evaluation (and so the best-mIoU checkpoint) uses, for logs and checkpoints."""
    split = OmegaConf.select(cfg, 'evaluate.seg.select_split', default=None)
    selection = list(OmegaConf.select(cfg, 'evaluate.seg.select_cfgs', default=None) or [])
    where = f'mean of {", ".join(selection)}' if selection else cfg.evaluate.seg.cfg
    return f'{where} [{split or "configured split"}]'


def run_seg_eval(cfg: DictConfig, model) -> Optional[float]:
    """mIoU from segmentation.evaluation.evaluate_seg (the mean over evaluate.seg.select_cfgs when set), or None
    when that is not available or fails."""
    logger = get_logger()
    try:
        from segmentation.evaluation import evaluate_seg, load_benchmark
    except ImportError as e:
        logger.info(f'zero-shot segmentation evaluation skipped: segmentation.evaluation.evaluate_seg is not '
                    f'available ({e})')
        return None
    split = OmegaConf.select(cfg, 'evaluate.seg.select_split', default=None)
    selection = list(OmegaConf.select(cfg, 'evaluate.seg.select_cfgs', default=None) or [])
    try:
        if selection:
            seg = cfg.evaluate.seg
            mious = []
            for path in selection:
                bench = load_benchmark(path, list(seg.get('opts') or []), seg.get('template'))
                mious.append(float(evaluate_seg(model, None, benchmark=bench, split=split)['mIoU']))
                logger.info(f'zero-shot segmentation mIoU {mious[-1]:.2f} on {path} [{split or "configured split"}]')
            result = sum(mious) / len(mious)
        else:
            result = evaluate_seg(model, cfg, **({'split': split} if split else {}))
    except Exception:  # a failing evaluation must not end a long training run; the traceback goes to the log
        logger.exception('zero-shot segmentation evaluation failed; training continues')
        return None
    miou = float(result['mIoU'] if isinstance(result, dict) else result)
    logger.info(f'zero-shot segmentation mIoU {miou:.2f} on {seg_split(cfg)}')
    return miou


def update_best(cfg: DictConfig, key: str, value: Optional[float], split: str, epoch: int,
                checkpointer: Checkpointer) -> None:
    """Save ckpt_best_<key> when ``value`` beats the best so far; records metric, value, epoch and split."""
    state = checkpointer.state
    if value is None or value <= state.best.get(key, {}).get('value', float('-inf')):
        return
    state.best[key] = {'value': value, 'epoch': epoch, 'split': split}
    path = checkpointer.save(osp.join(cfg.output, f'ckpt_best_{key}'), epoch, best={'metric': key, **state.best[key]})
    get_logger().info(f'new best {key} {value:.2f} on {split} at epoch {epoch}: {path}')


def evaluate_epoch(cfg: DictConfig, epoch: int, trainer: Trainer, val_loader, prompts: ClassPrompts,
                   checkpointer: Checkpointer):
    """The evaluations of evaluate.task after an epoch; a new best metric is saved through `checkpointer`."""
    state = trainer.state
    if 'cls' in cfg.evaluate.task and val_loader is not None:
        results = run_cls_eval(cfg, trainer.model, trainer.device, trainer.precision, val_loader, prompts,
                               trainer.writer, state.step)
        acc1 = results[cfg.evaluate.cls.template]['acc1']
        split = f"{','.join(cfg.data.dataset.val)} ({cfg.evaluate.cls.template} templates)"
        if cfg.evaluate.cls.save_best:
            update_best(cfg, 'acc1', acc1, split, epoch, checkpointer)
    if 'seg' in cfg.evaluate.task:
        miou = run_seg_eval(cfg, trainer.model)
        if miou is not None:
            trainer.writer.scalars({'val/miou': miou}, state.step)
            if cfg.evaluate.seg.save_best:
                update_best(cfg, 'miou', miou, seg_split(cfg), epoch, checkpointer)
        trainer.model.train()
