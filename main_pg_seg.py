"""Train PGSeg / GroupViT on webdataset image-caption shards, or evaluate zero-shot ImageNet classification.

    python main_pg_seg.py configs/toy/pgseg_tiny.yml                      # one process (CPU or one GPU)
    python -m torch.distributed.run --nproc_per_node 8 main_pg_seg.py --cfg configs/pgseg_specific.yml
    python main_pg_seg.py CFG --resume CKPT --eval                        # zero-shot classification only

Exit status: 0 done, 1 a run error (one log line says which), 3 stopped by a preemption signal after a checkpoint
(utils/signals.py; the same command continues).
"""
import argparse
import json
import os
import os.path as osp
import sys

LAUNCHER_PID = os.getppid()  # before the slow imports below: the launcher may die while they run

from omegaconf import OmegaConf

from datasets import (build_img_transform, build_text_transform, build_train_data, build_val_loader, format_counts,
                      tokenize)
from datasets.imagenet import ClassListError
from datasets.shards import EPOCH_SEED_STRIDE, ShardConfigError, describe_shards
from models import build_model
from utils.checkpoint import CheckpointError, recover_interrupted_saves
from utils.config import ConfigError, get_config
from utils.distributed import close_distributed, get_rank, get_world_size, init_distributed, is_main_process, wrap_ddp
from utils.engine import NonFiniteLossError, Preempted, Trainer, train_one_epoch
from utils.evaluation import evaluate_epoch
from utils.logging import MetricWriter, get_logger, setup_logger
from utils.misc import seed_everything
from utils.optim import build_optimizer
from utils.plots import plot_loss_curves
from utils.precision import Precision
from utils.resume import Checkpointer, init_weights, newest_loadable, resume_point
from utils.run_lock import RunLockedError, hold_run_folder
from utils.scheduler import accumulation, build_scheduler, scale_lr
from utils.signals import PreemptionSignals, die_with_launcher, exit_preempted
from utils.zero_shot import class_prompts, run_cls_eval

RUN_ERRORS = (ConfigError, ShardConfigError, CheckpointError, ClassListError, NonFiniteLossError)


def parse_args(argv=None):
    parser = argparse.ArgumentParser('PGSeg / GroupViT training and zero-shot classification')
    parser.add_argument('config', nargs='?', help='config file (same as --cfg)')
    parser.add_argument('--cfg', help='config file')
    parser.add_argument('--opts', nargs='+', help="config overrides 'a.b=value' ...")
    parser.add_argument('--batch-size', type=int, help='batch size per process (data.batch_size)')
    parser.add_argument('--resume', help='checkpoint to resume (a weights-only file is used as init)')
    parser.add_argument('--init', help='weights-only initialisation from a checkpoint (checkpoint.init)')
    parser.add_argument('--amp-opt-level', choices=['O0', 'O1', 'O2'],
                        help='O0 float32, O1 float16 autocast + GradScaler, O2 bfloat16 autocast')
    parser.add_argument('--output', help='output root; the run folder is <output>/<model_name>/<tag>')
    parser.add_argument('--tag', help='experiment tag')
    parser.add_argument('--eval', action='store_true', help='zero-shot classification only')
    parser.add_argument('--wandb', action='store_true', help='also log to Weights & Biases')
    parser.add_argument('--keep', type=int, help='number of epoch checkpoints to keep (checkpoint.max_kept)')
    parser.add_argument('--local_rank', '--local-rank', type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if bool(args.config) == bool(args.cfg):
        parser.error('give the config file once, positionally or as --cfg')
    args.cfg = args.cfg or args.config
    return args


def train(cfg, model, device, precision, preemption):
    logger = get_logger()
    rank, world = get_rank(), get_world_size()
    lrs = scale_lr(cfg.train, int(cfg.data.batch_size), world)
    accum = accumulation(cfg.train)
    logger.info(f'batch {cfg.data.batch_size} per process x {world} processes x {accum} accumulation steps: '
                + lrs.describe())
    img_transform = build_img_transform(True, cfg.data.img_aug)
    data = build_train_data(cfg.data, img_transform, build_text_transform(True, cfg.data.text_aug, tokenize), rank,
                            world, int(cfg.data.seed), model.train_sample_transform(cfg.data, img_transform))
    missing = describe_shards(data.shard_report)
    if missing:
        logger.warning(f'missing training shards: {missing}')
    epoch_steps = OmegaConf.select(cfg, 'train.epoch_steps', default=None)
    if epoch_steps is None:
        steps_per_epoch = data.steps_per_epoch
        updates_per_epoch = max(1, steps_per_epoch // accum)
        logger.info(f'{data.length} training samples: {steps_per_epoch} batches, {updates_per_epoch} optimizer '
                    'steps per epoch')
    else:
        if int(epoch_steps) < 1:
            raise ConfigError(f'train.epoch_steps must be a positive number of optimizer steps, got {epoch_steps}')
        updates_per_epoch = int(epoch_steps)
        steps_per_epoch = updates_per_epoch * accum
        logger.info(f'{data.length} training samples; an epoch is train.epoch_steps = {updates_per_epoch} optimizer '
                    f'steps ({steps_per_epoch} batches)')
    optimizer = build_optimizer(cfg.train, model, lrs.base_lr)
    scheduler = build_scheduler(cfg.train, optimizer, lrs, updates_per_epoch)
    checkpointer = Checkpointer(cfg, model, optimizer, scheduler, precision, data)
    state = checkpointer.resume_or_init()
    start_batch, positions, bad_before = resume_point(state, data, rank)
    find_unused = OmegaConf.select(cfg, 'train.find_unused_parameters', default=None)
    if find_unused is None:
        find_unused = model.find_unused_parameters
    train_model = wrap_ddp(model, device, find_unused)
    writer = MetricWriter(cfg.output, rank, bool(cfg.wandb), cfg.model_name,
                          OmegaConf.to_container(cfg, resolve=True))
    val_loader = prompts = None
    if 'cls' in cfg.evaluate.task:
        val_loader, _ = build_val_loader(cfg.data, build_img_transform(False, cfg.data.img_aug), rank, world)
        prompts = class_prompts(cfg)
    record = (open(osp.join(cfg.output, f'samples_rank{rank}.txt'), 'a')
              if OmegaConf.select(cfg, 'train.record_samples', default=False) else None)
    trainer = Trainer(cfg, model, train_model, optimizer, scheduler, precision, data, steps_per_epoch, accum,
                      device, writer, state,
                      nonfinite_patience=int(OmegaConf.select(cfg, 'train.nonfinite_patience', default=10)),
                      checkpointer=checkpointer, preemption=preemption, sample_record=record)
    logger.info(f'training epochs {state.epoch}..{cfg.train.epochs - 1}')
    try:
        for epoch in range(state.epoch, cfg.train.epochs):
            state.epoch = epoch
            # seeds of the epoch itself: a resumed epoch draws what it would have drawn in an uninterrupted run
            seed_everything(int(cfg.seed) + rank + EPOCH_SEED_STRIDE * epoch)
            data.set_epoch(epoch, start_batch, positions)
            train_one_epoch(trainer, epoch, start_batch, bad_before)
            start_batch, positions, bad_before = 0, None, None
            last = epoch == cfg.train.epochs - 1
            if epoch % cfg.checkpoint.save_freq == 0 or last:
                checkpointer.save_epoch(epoch)
            if epoch % cfg.evaluate.eval_freq == 0 or last:
                evaluate_epoch(cfg, epoch, trainer, val_loader, prompts, checkpointer)
    finally:
        if record is not None:
            record.close()
        if rank == 0:
            figure = plot_loss_curves(writer.history, osp.join(cfg.output, 'loss_curves.png'))
            if figure:
                logger.info(f'loss curves: {figure}')
        writer.close()
    logger.info(f'done: best {json.dumps(state.best)}; bad training data over the run: '
                f'{format_counts(state.bad_data)}; non-finite steps skipped: {state.nonfinite_total}')


def evaluate_only(cfg, model, device, precision):
    logger = get_logger()
    path = cfg.checkpoint.resume
    if not path and cfg.checkpoint.auto_resume:
        path, _ = newest_loadable(cfg.output)
    if path:
        init_weights(model, path, reason='--eval')
    else:
        logger.warning('--eval without --resume and no checkpoint in the output folder: evaluating random weights')
    rank, world = get_rank(), get_world_size()
    val_loader, _ = build_val_loader(cfg.data, build_img_transform(False, cfg.data.img_aug), rank, world)
    results = run_cls_eval(cfg, model, device, precision, val_loader, class_prompts(cfg))
    if is_main_process():
        with open(osp.join(cfg.output, 'zero_shot_cls.json'), 'w') as f:
            json.dump({'checkpoint': path, 'val': list(cfg.data.dataset.val), **results}, f, indent=1)


def main(argv=None):
    args = parse_args(argv)
    die_with_launcher(LAUNCHER_PID)
    device = init_distributed()
    rank = get_rank()
    setup_logger(None, rank)
    logger = get_logger()
    lock = preemption = None
    try:
        cfg = get_config(args)
        if args.init:
            cfg.checkpoint.init = args.init
        preemption = None if cfg.evaluate.eval_only else PreemptionSignals().install()
        lock = hold_run_folder(cfg.output)
        setup_logger(cfg.output, rank)
        if rank == 0:
            OmegaConf.save(cfg, osp.join(cfg.output, 'config.yaml'))
        logger.info(f'command: {" ".join(sys.argv)}')
        logger.info(f'output folder {cfg.output}; device {device}; {get_world_size()} processes')
        if lock is not None:
            if lock.took_over:
                logger.warning(lock.took_over)
            for line in recover_interrupted_saves(cfg.output):
                logger.info(line)
        seed_everything(int(cfg.seed))
        model = build_model(cfg.model).to(device)
        logger.info(f'{type(model).__name__}: '
                    f'{sum(p.numel() for p in model.parameters() if p.requires_grad)} trainable parameters')
        precision = Precision(cfg.train.amp_opt_level, device.type)
        logger.info(f'precision {precision.describe()}')
        if cfg.evaluate.eval_only:
            evaluate_only(cfg, model, device, precision)
        else:
            train(cfg, model, device, precision, preemption)
    except Preempted as stop:
        if rank == 0:  # every rank stops at the same step, for the same reason
            logger.warning(str(stop))
        close_distributed()
        exit_preempted()
    except RunLockedError as e:
        if rank == 0:  # the other ranks stop with it, silently: one line says why
            logger.error(str(e))
        close_distributed(wait_for_others=False)
        sys.exit(1)
    except RUN_ERRORS as e:
        logger.error(str(e))
        close_distributed(wait_for_others=False)
        sys.exit(1)
    finally:
        if lock is not None:
            lock.release()
        if preemption is not None:
            preemption.restore()
    close_distributed()


if __name__ == '__main__':
    main()
