"""Evaluation during and after training: zero-shot classification, the segmentation hook, best checkpoints."""
import os.path as osp
from typing import Callable, Optional

from omegaconf import DictConfig, OmegaConf

from datasets import build_class_tokens, format_counts, get_templates, tokenize, val_class_names

from .engine import Trainer, TrainState, evaluate_cls
from .logging import get_logger


def class_tokens(cfg: DictConfig) -> dict:
    """{template set: tokens [N, T, L]} for the selection template and evaluate.cls.extra_templates."""
    extra = OmegaConf.select(cfg, 'evaluate.cls.extra_templates', default=['full', 'simple'])
    names = [cfg.evaluate.cls.template, *extra]
    classes = val_class_names(cfg.data)
    return {n: build_class_tokens(classes, get_templates(n), tokenize, cfg.data.text_aug.max_seq_len)
            for n in dict.fromkeys(names)}


def run_cls_eval(cfg: DictConfig, model, device, precision, val_loader, tokens: dict, writer=None,
                 step: int = 0) -> dict:
    """Zero-shot accuracy per template set, logged (and written to ``writer``)."""
    logger = get_logger()
    results = evaluate_cls(model, val_loader, tokens, device, precision)
    bad = results.pop('bad')
    val_name = ','.join(cfg.data.dataset.val)
    for name, r in results.items():
        logger.info(f"zero-shot {val_name} ({name} templates): acc1 {r['acc1']:.2f}  acc5 {r['acc5']:.2f}  "
                    f"over {r['count']} images")
        if writer is not None:
            writer.scalars({f'val/acc1_{name}': r['acc1'], f'val/acc5_{name}': r['acc5']}, step)
    if bad:
        logger.info(f'bad validation data: {format_counts(bad)}')
    return results


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


def update_best(cfg: DictConfig, key: str, value: Optional[float], split: str, epoch: int, state: TrainState,
                save: Callable) -> None:
    """Save ckpt_best_<key> when ``value`` beats the best so far; records metric, value, epoch and split."""
    if value is None or value <= state.best.get(key, {}).get('value', float('-inf')):
        return
    state.best[key] = {'value': value, 'epoch': epoch, 'split': split}
    path = save(osp.join(cfg.output, f'ckpt_best_{key}'), epoch, best={'metric': key, **state.best[key]})
    get_logger().info(f'new best {key} {value:.2f} on {split} at epoch {epoch}: {path}')


def evaluate_epoch(cfg: DictConfig, epoch: int, trainer: Trainer, val_loader, tokens: dict, save: Callable):
    """The evaluations of evaluate.task after an epoch; ``save(path, epoch, **extra)`` writes a checkpoint."""
    state = trainer.state
    if 'cls' in cfg.evaluate.task and val_loader is not None:
        results = run_cls_eval(cfg, trainer.model, trainer.device, trainer.precision, val_loader, tokens,
                               trainer.writer, state.step)
        acc1 = results[cfg.evaluate.cls.template]['acc1']
        split = f"{','.join(cfg.data.dataset.val)} ({cfg.evaluate.cls.template} templates)"
        if cfg.evaluate.cls.save_best:
            update_best(cfg, 'acc1', acc1, split, epoch, state, save)
    if 'seg' in cfg.evaluate.task:
        miou = run_seg_eval(cfg, trainer.model)
        if miou is not None:
            trainer.writer.scalars({'val/miou': miou}, state.step)
            if cfg.evaluate.seg.save_best:
                update_best(cfg, 'miou', miou, seg_split(cfg), epoch, state, save)
        trainer.model.train()
