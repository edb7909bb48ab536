"""Peak memory of a zero-shot segmentation evaluation with many classes on a large image, end to end.

    python benchmarks/seg_memory.py                                  # 919 classes, one 3000x4000 image, CPU
    python benchmarks/seg_memory.py --max-rss-mib 2048               # exit 1 when the peak goes over 2 GiB
    python benchmarks/seg_memory.py --logits dense                   # the dense accumulator, for comparison

Writes an ImageNet-S919 copy with one image (``benchmarks/seg_fixtures.py``) into a temporary folder, builds the
published GroupViT (or PGSeg) architecture with random weights and runs ``evaluate_seg`` with the
``pgseg_imagenet_s919.py`` protocol, in this process and with no loader workers, so that the process's peak
resident set size covers everything: imports, model, text embeddings of the 919 prompts, the sliding window,
labels at 3000x4000 and the IoU metric. On CUDA the peak of PyTorch's allocations on the device is reported too.
"""
import argparse
import json
import multiprocessing
import os
import os.path as osp
import resource
import sys
import tempfile
import time

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import torch  # noqa: E402

PRESET = 'segmentation/configs/_base_/datasets/pgseg_imagenet_s919.py'


def peak_rss_mib():
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def spread_group_weights(model, seed=0):
    """Redraw the image encoder's matrices wider (std 2 / sqrt(fan-in)): with the default initialisation one final
    group takes every pixel, which would leave the sliding window a single group combination to keep."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in model.img_encoder.parameters():
            if weight.dim() >= 2:
                weight.copy_(torch.randn(weight.shape, generator=generator) * 2 / weight[0].numel()**0.5)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, nargs=2, default=(3000, 4000), metavar=('H', 'W'))
    parser.add_argument('--model', choices=('groupvit', 'pgseg'), default='groupvit')
    parser.add_argument('--quick', action='store_true',
                        help='tiny architecture, copy written in this process (smoke test, not the measurement)')
    parser.add_argument('--logits', choices=('compact', 'dense'), default='compact',
                        help='test_cfg.compact_logits true (default) or false')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--threads', type=int, help='torch CPU threads')
    parser.add_argument('--max-rss-mib', type=float, help='exit with status 1 when the peak RSS exceeds this')
    parser.add_argument('--out', help='JSON file for the measurement')
    return parser.parse_args(argv)


def measure(args):
    from benchmarks.run import QUICK_OPTS
    from benchmarks.seg_fixtures import write_imagenet_s
    from benchmarks.train_bench import CONFIGS, ROOT
    from benchmarks.train_step import build_ours, load_model_cfg
    from segmentation.evaluation import evaluate_seg, load_benchmark

    device = torch.device(args.device)
    rss_start = peak_rss_mib()
    model = build_ours(load_model_cfg(CONFIGS[args.model], QUICK_OPTS if args.quick else ()), device).eval()
    spread_group_weights(model)
    with tempfile.TemporaryDirectory() as tmp:
        samples = [(300, *args.size)]
        if args.quick:
            write_imagenet_s(tmp, 919, samples)
        else:  # written by another process, so that this one's peak is the evaluation's
            writer = multiprocessing.get_context('spawn').Process(target=write_imagenet_s, args=(tmp, 919, samples))
            writer.start()
            writer.join()
            if writer.exitcode != 0:
                raise SystemExit(f'seg_memory: writing the ImageNet-S copy failed (exit code {writer.exitcode})')
        data_root = osp.join(tmp, 'ImageNetS919')
        bench = load_benchmark(osp.join(ROOT, PRESET), [f'data_root={data_root}', 'num_workers=0',
                                                        f'test_cfg.compact_logits={args.logits == "compact"}'])
        rss_model = peak_rss_mib()
        if device.type == 'cuda':
            torch.cuda.reset_peak_memory_stats(device)
            cuda_base = torch.cuda.memory_allocated(device)
        start = time.perf_counter()
        result = evaluate_seg(model, None, benchmark=bench, progress=False)
        seconds = time.perf_counter() - start
    out = dict(num_classes=result['protocol']['num_classes'], original_hw=list(args.size),
               model=args.model + (' (quick)' if args.quick else ''),
               logits=args.logits, device=str(device), threads=torch.get_num_threads(), seconds=round(seconds, 1),
               peak_rss_mib=round(peak_rss_mib(), 1), rss_after_imports_mib=round(rss_start, 1),
               rss_after_model_mib=round(rss_model, 1), mIoU=result['mIoU'])
    if device.type == 'cuda':
        out['cuda_peak_allocated_mib'] = round((torch.cuda.max_memory_allocated(device) - cuda_base) / 2**20, 1)
        out['gpu'] = torch.cuda.get_device_name(device)
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = measure(args)
    print(json.dumps(out, indent=1))
    if args.out:
        os.makedirs(osp.dirname(osp.abspath(args.out)), exist_ok=True)
        with open(args.out, 'w') as f:
            json.dump(out, f, indent=1)
            f.write('\n')
    if args.max_rss_mib is not None and out['peak_rss_mib'] > args.max_rss_mib:
        print(f'peak RSS {out["peak_rss_mib"]:.0f} MiB exceeds --max-rss-mib {args.max_rss_mib:.0f}', file=sys.stderr)
        sys.exit(1)


if __name__ == '__main__':
    main()
