"""Zero-shot semantic segmentation of a GroupViT / PGSeg checkpoint on one benchmark.

    python main_seg.py CFG --resume CKPT [--opts evaluate.seg.cfg segmentation/configs/_base_/datasets/coco.py]
    ./tools/dist_launch.sh main_seg.py CFG NPROC --resume CKPT [--vis 8] [--output DIR]

Prints the per-class IoU table, mIoU / aAcc / mAcc and the protocol, and writes them as JSON next to the
checkpoint (or into --output). Runs under torchrun (nccl on GPUs, gloo on CPU).
"""
import argparse
import hashlib
import os.path as osp
import sys
from datetime import timedelta

from omegaconf import OmegaConf

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from segmentation.datasets import SegDataError
from segmentation.evaluation import (benchmark_from_cfg, build_benchmark_dataset, describe, evaluate_seg,
                                     format_protocol, format_table, write_report)
from utils.checkpoint import CheckpointError, build_and_load, is_checkpoint_dir
from utils.config import ConfigError, get_config
from utils.distributed import close_distributed, get_rank, get_world_size, init_distributed


def parse_args(argv=None):
    parser = argparse.ArgumentParser('zero-shot segmentation evaluation')
    parser.add_argument('config', nargs='?', help='model config (.yml); same as --cfg')
    parser.add_argument('--cfg', help='model config (.yml)')
    parser.add_argument('--resume', required=True, help='checkpoint to evaluate (.pth, .safetensors or folder)')
    parser.add_argument('--opts', nargs='+', default=None,
                        help="config overrides, 'key=value' or 'key value' pairs, e.g. evaluate.seg.cfg "
                        "segmentation/configs/_base_/datasets/pascal_context.py")
    parser.add_argument('--vis', type=int, default=0, metavar='N', help='write overlays of the first N images')
    parser.add_argument('--output', help='folder for the JSON report and overlays (default: next to --resume)')
    parser.add_argument('--tag', help='tag of the run (recorded in the report)')
    args = parser.parse_args(argv)
    args.cfg = args.cfg or args.config
    if not args.cfg:
        parser.error('give the model config (positional CONFIG or --cfg)')
    if args.vis < 0:
        parser.error('--vis must be >= 0')
    return args


def file_sha256(path, chunk=1 << 24):
    """First 12 hex digits of the sha256 of a checkpoint file (of its weights file for a folder)."""
    if is_checkpoint_dir(path):
        path = osp.join(path, 'model.safetensors')
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(chunk), b''):
            digest.update(block)
    return digest.hexdigest()[:12]


def report_paths(args, bench):
    """-> (json path, overlay folder): <output>/seg_<benchmark>.json, or <checkpoint>_seg_<benchmark>.json."""
    bench_name = osp.splitext(osp.basename(bench.config_path))[0]
    if args.output:
        return osp.join(args.output, f'seg_{bench_name}.json'), args.output
    ckpt = args.resume.rstrip('/')
    stem = osp.join(osp.dirname(osp.abspath(ckpt)), osp.splitext(osp.basename(ckpt))[0])
    return f'{stem}_seg_{bench_name}.json', f'{stem}_seg_{bench_name}'


def evaluate(args):
    cfg = get_config(argparse.Namespace(cfg=args.cfg, opts=args.opts, tag=args.tag))
    if not osp.exists(args.resume):
        raise CheckpointError(f'checkpoint not found: {args.resume}')
    # the ranks meet only at the metric's gather, after each has evaluated its whole share of the benchmark
    device = init_distributed(timeout=timedelta(minutes=60))
    rank = get_rank()
    bench = benchmark_from_cfg(cfg)
    dataset = build_benchmark_dataset(bench)
    if rank == 0:
        print('protocol: ' + format_protocol(describe(bench, dataset)), flush=True)

    model = build_and_load(cfg.model, args.resume).to(device).eval()
    json_path, out_dir = report_paths(args, bench)
    result = evaluate_seg(model, cfg, benchmark=bench, dataset=dataset, vis=args.vis, output_dir=out_dir,
                          progress=rank == 0)
    if rank == 0:
        print(format_table(result))
        write_report(result, json_path, config=args.cfg, seg_config=bench.config_path,
                     opts=list(args.opts or []), checkpoint=osp.abspath(args.resume),
                     checkpoint_sha256=file_sha256(args.resume), world_size=get_world_size(), device=str(device),
                     tag=args.tag, model_config=OmegaConf.to_container(cfg.model, resolve=True))
        print(f'report: {json_path}')
        if result.get('vis'):
            print(f'overlays: {osp.join(out_dir, "vis")}')
    return result


def main(argv=None):
    args = parse_args(argv)
    finished = False
    try:
        evaluate(args)
        finished = True
    except (SegDataError, ConfigError, CheckpointError) as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)
    finally:
        close_distributed(wait_for_others=finished)


if __name__ == '__main__':
    main()
