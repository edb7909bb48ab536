"""Speed and memory benchmark: training step against Hugging Face transformers' GroupViTModel (same weights, same
inputs, one run), zero-shot segmentation against the published per-crop protocol (GroupViT; TCL per crop), and data
loading.

    python benchmarks/run.py --out results.json [--device cpu|cuda] [--quick]

Every claim is a ratio of medians of variants run interleaved in the same process (A, B, A, B, ...).
On a shared CPU machine use `--threads 1 --clock process` (CPU time of this process: other processes taking the
cores do not count). See benchmarks/NOTES.md for what each lever is predicted and measured to do.
"""
import argparse
import json
import os
import os.path as osp
import platform
import sys
import time

# the profiler that measures CPU peak memory would otherwise log every start and stop
os.environ.setdefault('KINETO_LOG_LEVEL', '6')
os.environ.setdefault('TORCH_CPP_LOG_LEVEL', 'ERROR')

import torch  # noqa: E402

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from benchmarks.report import flatten_headline, format_table  # noqa: E402

# a tiny architecture for --quick (smoke test): same code paths, seconds instead of minutes
QUICK_OPTS = ('img_encoder.img_size=64', 'img_encoder.embed_dim=64', 'img_encoder.num_heads=[2,2,2]',
              'img_encoder.depths=[1,1,1]', 'img_encoder.num_group_tokens=[8,4,0]',
              'img_encoder.num_output_groups=[8,4]', 'text_encoder.width=64', 'text_encoder.layers=2',
              'output_dim=32')
# dense bf16 tensor-core peaks (vendor datasheets), TFLOP/s
GPU_PEAK_BF16_TFLOPS = (('H100 PCIe', 756.), ('H100', 989.), ('H200', 989.), ('A100', 312.), ('L40S', 362.),
                        ('A10', 125.))
SECTIONS = ('train', 'encode', 'seg', 'data', 'levers')
DEFAULT_SECTIONS = ('train', 'encode', 'seg', 'data')


class BenchmarkError(Exception):
    """A command-line choice that cannot run here."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--out', required=True, help='JSON file for every measurement')
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', choices=('cpu', 'cuda'))
    parser.add_argument('--quick', action='store_true', help='tiny models and inputs, one repeat (smoke test)')
    parser.add_argument('--batch', type=int, help='training batch (default: 8 on CPU, 128 on CUDA, 2 with --quick)')
    parser.add_argument('--repeats', type=int, help='timed rounds per variant (default: 3 CPU, 10 CUDA, 1 quick)')
    parser.add_argument('--warmup', type=int, help='untimed rounds first (default: 1, 3 on CUDA)')
    parser.add_argument('--threads', type=int, help='torch CPU threads (default: torch\'s choice)')
    parser.add_argument('--clock', choices=('wall', 'process'), default='wall',
                        help='CPU timing: wall clock, or CPU time of this process (use with --threads 1)')
    parser.add_argument('--sections', default=','.join(DEFAULT_SECTIONS),
                        help=f'comma-separated subset of {SECTIONS} (levers: one lever at a time, not by default)')
    parser.add_argument('--compile', action='store_true', help='torch.compile the fast recipe\'s forward pass')
    return parser.parse_args(argv)


def settings(args) -> dict:
    cuda = args.device == 'cuda'
    if cuda and not torch.cuda.is_available():
        raise BenchmarkError('--device cuda: no CUDA device is available')
    sections = [s for s in args.sections.split(',') if s]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise BenchmarkError(f'--sections: unknown {unknown}; choose from {SECTIONS}')
    for name in ('batch', 'repeats', 'warmup', 'threads'):
        value = getattr(args, name)
        if value is not None and value < (0 if name == 'warmup' else 1):
            raise BenchmarkError(f'--{name} must be positive, got {value}')
    quick = args.quick
    pick = (lambda q, cpu, gpu: q if quick else gpu if cuda else cpu)
    return {'device': args.device, 'quick': quick, 'sections': sections, 'compile': args.compile,
            'batch': args.batch or pick(2, 8, 128), 'repeats': args.repeats or pick(1, 3, 10),
            'warmup': args.warmup if args.warmup is not None else pick(1, 1, 3),
            'clock': 'cuda events' if cuda else args.clock, 'threads': args.threads or torch.get_num_threads()}


def machine(device: torch.device) -> dict:
    info = {'cpu_model': _cpu_model(), 'cpu_cores': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
            'torch': torch.__version__, 'python': platform.python_version(), 'device': str(device),
            'cpu_bf16': _cpu_flag('avx512_bf16') or _cpu_flag('amx_bf16')}
    try:
        import transformers
        info['transformers'] = transformers.__version__
    except ImportError:
        info['transformers'] = None
    if device.type == 'cuda':
        name = torch.cuda.get_device_name(device)
        info.update(gpu=name, gpu_peak_bf16_tflops=next((p for key, p in GPU_PEAK_BF16_TFLOPS if key in name), None))
    return info


def _cpuinfo() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            return f.read()
    except OSError:
        return ''


def _cpu_model() -> str:
    line = next((l for l in _cpuinfo().splitlines() if l.startswith('model name')), '')
    return line.split(':', 1)[1].strip() if line else platform.processor()


def _cpu_flag(flag: str) -> bool:
    return f' {flag} ' in f' {_cpuinfo()} '.replace('\n', ' ')


def run_sections(cfg: dict, device: torch.device, log) -> dict:
    from benchmarks.data_bench import data_loading
    from benchmarks.encode_bench import encode_comparison
    from benchmarks.levers import lever_comparison
    from benchmarks.seg_bench import seg_comparison
    from benchmarks.tcl_bench import tcl_crop_comparison
    from benchmarks.train_bench import full_configs, peer_comparison
    quick, opts = cfg['quick'], QUICK_OPTS if cfg['quick'] else ()
    timing = dict(repeats=cfg['repeats'], warmup=cfg['warmup'], clock=cfg['clock'])
    jobs = {
        'train_vs_peer': ('train', lambda: peer_comparison(device, cfg['batch'], extra_opts=opts,
                                                           compile=cfg['compile'], **timing)),
        'train_full_configs': ('train', lambda: full_configs(device, cfg['batch'], extra_opts={
            'groupvit': opts, 'pgseg': opts}, compile=cfg['compile'], **timing)),
        'encode_vs_peer': ('encode', lambda: encode_comparison(device, cfg['batch'], 4 * cfg['batch'],
                                                               extra_opts=opts, **timing)),
        'seg': ('seg', lambda: seg_comparison(device, extra_opts=opts, **timing, **(
            dict(crop=64, stride=32, voc_hw=(75, 100), large_hw=(400, 600), large_classes=30) if quick else {}))),
        'seg_tcl': ('seg', lambda: tcl_crop_comparison(device, **timing, **(dict(crop=64, quick=True) if quick
                                                                               else {}))),
        'levers': ('levers', lambda: lever_comparison(device, cfg['batch'], extra_opts=opts, compile=cfg['compile'],
                                                      **timing)),
        'data': ('data', lambda: data_loading(**(dict(image_size=96, samples=8, batch=4, batches=1, quick=True)
                                                 if quick else {}))),
    }
    results, walls = {}, {}
    for name, (section, job) in jobs.items():
        if section not in cfg['sections']:
            continue
        start = time.time()
        log(f'[{name}] running ...')
        results[name] = job()
        walls[name] = round(time.time() - start, 1)
        log(f'[{name}] done in {walls[name]} s')
    return results, walls


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg = settings(args)
    except BenchmarkError as e:
        raise SystemExit(f'benchmark: {e}')
    if args.threads:
        torch.set_num_threads(args.threads)
    out = osp.abspath(args.out)
    device = torch.device(args.device)
    start = time.time()
    results = {'machine': machine(device), 'settings': cfg}
    results['sections'], results['section_wall_s'] = run_sections(
        cfg, device, lambda msg: print(msg, file=sys.stderr, flush=True))
    results['total_wall_s'] = round(time.time() - start, 1)
    results.update(flatten_headline(results))
    os.makedirs(osp.dirname(out) or '.', exist_ok=True)
    with open(out, 'w') as f:
        json.dump(results, f, indent=1)
    print(format_table(results))
    print(f'wrote {out}')

if __name__ == '__main__':
    main()
