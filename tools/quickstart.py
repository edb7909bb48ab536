"""The quickstart: the whole pipeline on the toy world, on CPU, in about a quarter of an hour.

    python tools/quickstart.py [--minutes 15] [--method NAME | --all]

toy world -> train the method's toy recipe with main_pg_seg.py (configs/toy/methods.yml) -> zero-shot segmentation
(the benchmark path of main_seg.py, background threshold chosen on the `tune` split) and zero-shot classification of
the trained and the untrained model -> overlay pictures, the learning curve and <output>/results.json (percent).
--all does that for every method of configs/toy/methods.yml (each under <output>/<name>/, each trained method with
the same --minutes) and prints one table, also written to <output>/all_methods.{json,md}.
"""
import argparse
import glob
import json
import os
import os.path as osp
import shutil
import subprocess
import sys
import time

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import yaml  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from datasets import build_img_transform, build_text_transform, build_train_data, build_val_loader  # noqa: E402
from datasets import tokenize  # noqa: E402
from models import build_model, training_loss  # noqa: E402
from segmentation.evaluation import (benchmark_from_cfg, evaluate_background, evaluate_group_oracle,  # noqa: E402
                                     evaluate_seg)
from tools.make_toy_data import make_toy_world  # noqa: E402
from utils.checkpoint import build_and_load, save_checkpoint  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.engine import batch_to_device  # noqa: E402
from utils.logging import setup_logger  # noqa: E402
from utils.misc import seed_everything  # noqa: E402
from utils.precision import Precision  # noqa: E402
from utils.resume import epoch_checkpoints  # noqa: E402
from utils.zero_shot import class_prompts, run_cls_eval  # noqa: E402

TOY_BENCHMARK = osp.join(ROOT, 'segmentation/configs/_base_/datasets/toy.py')
TOY_METHODS = osp.join(ROOT, 'configs/toy/methods.yml')
DEFAULT_METHOD = 'clip'
BG_GRID = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


class QuickstartError(Exception):
    """Bad quickstart input (method name, recipe table); the message names it."""


def read_methods(path=TOY_METHODS) -> dict:
    """configs/toy/methods.yml -> {name: {'recipe': absolute path, 'train': bool, 'clip', 'init', 'prepare'}}."""
    with open(path) as f:
        table = yaml.safe_load(f)
    methods = {}
    for name, entry in table.items():
        unknown = set(entry) - {'recipe', 'train', 'clip', 'init', 'prepare'}
        if unknown:
            raise QuickstartError(f'{path}: method {name}: unknown keys {sorted(unknown)}')
        for dep in ('clip', 'init'):
            if entry.get(dep) is not None and entry[dep] not in table:
                raise QuickstartError(f'{path}: method {name}: {dep}: {entry[dep]} is not a method of the table')
        methods[name] = dict(entry, recipe=osp.join(osp.dirname(path), entry['recipe']),
                             train=bool(entry.get('train', True)))
    return methods


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--minutes', type=float, default=15,
                   help='training time budget of each trained method (sets its number of epochs)')
    p.add_argument('--method', default=DEFAULT_METHOD,
                   help=f'a method of configs/toy/methods.yml (default {DEFAULT_METHOD}: the one whose masks emerge '
                        'best; benchmarks/toy_emergence.md)')
    p.add_argument('--all', action='store_true', help='every method of configs/toy/methods.yml, one table')
    p.add_argument('--recipe', help="train this toy config instead of the method's recipe")
    p.add_argument('--root', default=osp.join(ROOT, 'local_data/toy'), help='toy world folder (written if missing)')
    p.add_argument('--output', default=osp.join(ROOT, 'output/quickstart'))
    p.add_argument('--epochs', type=int, help='train this many epochs instead of fitting --minutes')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads for evaluation (1: small images gain nothing from more, and lose under load)')
    p.add_argument('--run-dir', help='evaluate this finished training run instead of training a new one')
    args = p.parse_args(argv)
    if args.all and (args.recipe or args.run_dir):
        p.error('--all trains every method with its own recipe: it takes neither --recipe nor --run-dir')
    return args


def ensure_world(root):
    if osp.isfile(osp.join(root, 'meta.json')):
        print(f'toy world: {root} (existing)')
    else:
        t0 = time.time()
        make_toy_world(root)
        print(f'toy world: wrote {root} in {time.time() - t0:.0f}s')
    with open(osp.join(root, 'meta.json')) as f:
        return json.load(f)


def prepare_ovsegmentor_shards(root) -> int:
    """OVSegmentor's entity shards of the toy captions (tools/prepare_ovsegmentor_data.py), once -> their length."""
    out = osp.join(root, 'ovsegmentor')
    if not osp.isfile(osp.join(out, 'cross_shards.json')):
        subprocess.run([sys.executable, osp.join(ROOT, 'tools/prepare_ovsegmentor_data.py'),
                        osp.join(root, 'shards', '*.tar'), out, '--prefix', 'ovseg', '--vocab',
                        osp.join(root, 'classes.json')], check=True, cwd=ROOT)
    with open(osp.join(out, 'cross_shards.json')) as f:
        return int(json.load(f)['count'])


PREPARE_STEPS = {'ovsegmentor_shards': prepare_ovsegmentor_shards}


def measure_throughput(cfg, steps=6, warmup=2):
    """Images/s of forward + backward + AdamW on one real batch of the recipe's training data (its text,
    superpixel or cross-image inputs as main_pg_seg.py builds them), at torch's thread count."""
    seed_everything(0)
    model = build_model(cfg.model).train()
    data_cfg = OmegaConf.merge(cfg.data, {'num_workers': 0})
    img_transform = build_img_transform(True, data_cfg.img_aug)
    data = build_train_data(data_cfg, img_transform, build_text_transform(True, data_cfg.text_aug, tokenize), 0, 1,
                            0, model.train_sample_transform(data_cfg, img_transform))
    inputs = batch_to_device(next(data), torch.device('cpu'))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        loss = training_loss(model(**inputs))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[warmup:])  # the first steps pay for allocations and thread start-up
    return inputs['image'].shape[0] / timed[len(timed) // 2]


def train(args, cfg, recipe, out, length, start_opts=(), init=None):
    """main_pg_seg.py on `recipe` under out/runs, an epoch = `length` samples (the data there, not the recipe's
    default world) -> (run dir, epochs, seconds)."""
    if args.epochs:
        epochs = args.epochs
    else:
        ips = measure_throughput(cfg)
        # 0.6: the loader worker shares the cores, per-epoch checkpoints and evaluation share the budget (measured:
        # the probe said 149 images/s, the 11 epochs of a 0.7 factor ran at 90.5 and took 16.2 min of 15)
        epochs = max(1, int(0.6 * args.minutes * 60 * ips / length))
        print(f'training speed here ~{ips:.0f} images/s -> {epochs} epochs of {length} images in ~{args.minutes:g} min')
    runs = osp.join(out, 'runs')
    meta_key = f'data.dataset.meta.{cfg.data.dataset.train[0]}.length'
    cmd = [sys.executable, osp.join(ROOT, 'main_pg_seg.py'), recipe, '--output', runs, '--tag', 'quickstart']
    if init:
        cmd += ['--init', init]
    cmd += ['--opts', f'data.root={args.root}', f'train.epochs={epochs}', f'{meta_key}={length}', *start_opts]
    print('train:', ' '.join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f'training took {(time.time() - t0) / 60:.1f} min')
    run_dirs = sorted(glob.glob(osp.join(runs, '*', 'quickstart')), key=osp.getmtime)
    return run_dirs[-1], epochs, time.time() - t0


def toy_cfg(cfg, root):
    """The run's config pointed at the toy world, its segmentation on the toy benchmark unless it names one."""
    cfg = OmegaConf.merge(cfg, {'data': {'root': root}})
    seg = cfg.evaluate.get('seg') or {}
    if osp.basename(str(seg.get('cfg', ''))) != 'toy.py':
        cfg.evaluate.seg = OmegaConf.merge(seg, {'cfg': TOY_BENCHMARK, 'opts': []})
    return cfg


def top1(cfg, model):
    loader, _ = build_val_loader(cfg.data, build_img_transform(False, cfg.data.img_aug), 0, 1)
    results = run_cls_eval(cfg, model, torch.device('cpu'), Precision('O0', 'cpu'), loader, class_prompts(cfg))
    return results[cfg.evaluate.cls.template]['acc1']


def toy_benchmark(cfg, root, *opts):
    """The run's segmentation benchmark (see toy_cfg) on the toy world at `root`, with extra 'key=value' opts."""
    return benchmark_from_cfg(cfg, [f'data_root={root}/voc', *opts])


def segment(cfg, model, root, bg_thresh=None, split='val', **kw):
    """mIoU on the toy set through main_seg.py's path (the run's evaluate.seg options); without bg_thresh it is
    chosen on the 'tune' split (never on 'val')."""
    if bg_thresh is None:
        scores = {b: segment(cfg, model, root, b, 'tune')['mIoU'] for b in BG_GRID}
        bg_thresh = max(scores, key=scores.get)
    result = evaluate_seg(model, None, benchmark=toy_benchmark(cfg, root, f'test_cfg.bg_thresh={bg_thresh}'),
                          split=split, progress=False, **kw)
    result['bg_thresh'] = bg_thresh
    return result


def group_oracle_miou(cfg, model, root, split='val'):
    """mIoU when every final group is labelled with its majority true class (None for a method without groups)."""
    result = evaluate_group_oracle(model, benchmark=toy_benchmark(cfg, root), split=split)
    return None if result is None else result['mIoU']


def untrained_model(cfg, methods, name):
    """The method as its run starts: seeded as main_pg_seg.py seeds before building; a method built on another's
    CLIP gets that CLIP untrained too (the clip recipe's architecture, same seed)."""
    model_cfg = cfg.model
    dep = methods[name].get('clip')
    if dep:
        model_cfg = OmegaConf.merge(model_cfg, {})
        model_cfg.clip_model = load_config(methods[dep]['recipe']).model.clip_model
    seed_everything(int(cfg.seed))
    return build_model(model_cfg)


def evaluate_method(name, methods, cfg, model, args, out, vis=4):
    """-> the results of one method's model (trained or training-free) on the toy world, in percent."""
    cfg = toy_cfg(cfg, args.root)
    shutil.rmtree(osp.join(out, 'vis'), ignore_errors=True)
    seg_trained = segment(cfg, model, args.root, vis=vis, output_dir=out)
    untrained = untrained_model(cfg, methods, name)
    seg_untrained = segment(cfg, untrained, args.root)
    background = evaluate_background(benchmark=toy_benchmark(cfg, args.root))
    results = {
        'method': name, 'trained_miou': seg_trained['mIoU'], 'untrained_miou': seg_untrained['mIoU'],
        'background_miou': background['mIoU'],
        'per_class_iou': {k: v['IoU'] for k, v in seg_trained['per_class'].items()},
        'bg_thresh': {'trained': seg_trained['bg_thresh'], 'untrained': seg_untrained['bg_thresh'],
                      'chosen_on': 'tune split'},
        'group_oracle_miou': group_oracle_miou(cfg, model, args.root),
    }
    if 'cls' in cfg.evaluate.task:
        results['trained_top1'] = top1(cfg, model)
        results['untrained_top1'] = top1(cfg, untrained)
    return results


def run_method(name, methods, args, out, done, recipe=None):
    """Train (unless training-free) and evaluate method `name` under `out`; the methods it starts from are run
    first (under <args.output>/<dependency>) unless already in `done` ({name: results}). -> its results."""
    entry = methods[name]
    start_opts, init = [], None
    for key in ('clip', 'init'):
        dep = entry.get(key)
        if dep and dep not in done:
            done[dep] = run_method(dep, methods, args, osp.join(args.output, dep), done)
    if entry.get('clip'):
        start_opts.append(f"model.clip_model={done[entry['clip']]['checkpoint']}")
    if entry.get('init'):
        init = done[entry['init']]['checkpoint']
    length = args.world_length
    if entry.get('prepare'):
        length = PREPARE_STEPS[entry['prepare']](args.root)
    recipe = recipe or entry['recipe']
    os.makedirs(out, exist_ok=True)
    print(f'\n=== {name}: {osp.relpath(recipe, ROOT)} ===')
    if entry['train']:
        if args.run_dir:
            run_dir, epochs, seconds = osp.abspath(args.run_dir), None, 0.
        else:
            cfg = load_config(recipe)
            cfg.data.root = args.root
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(start_opts))
            run_dir, epochs, seconds = train(args, cfg, recipe, out, length, start_opts, init)
        cfg = OmegaConf.load(osp.join(run_dir, 'config.yaml'))
        checkpoint = epoch_checkpoints(run_dir)[0][1]  # newest = the final model, not the best moment of the run
        model = build_and_load(cfg.model, checkpoint)
    else:
        run_dir, epochs, seconds, checkpoint = None, 0, 0., None
        cfg = OmegaConf.merge(load_config(recipe), OmegaConf.from_dotlist(start_opts))
        model = build_model(cfg.model)
    torch.set_num_threads(args.threads)
    setup_logger(None, 0)
    # the demo and the web app pick the quickstart model up from these two files
    save_checkpoint(osp.join(out, 'checkpoint.pth'), model.state_dict())
    model_cfg = OmegaConf.merge(cfg, {'model_name': 'quickstart', 'output': 'output', 'tag': 'default'})
    # a run's own name and folder would nest the folders of main_pg_seg.py runs on this config inside the run
    OmegaConf.save(model_cfg, osp.join(out, 'config.yml'))
    t0 = time.time()
    results = evaluate_method(name, methods, cfg, model, args, out)
    results.update({
        'epochs': epochs, 'train_minutes': round(seconds / 60, 2),
        'images_per_second': round(epochs * length / seconds, 1) if seconds else None,
        'eval_minutes': round((time.time() - t0) / 60, 2), 'recipe': osp.relpath(recipe, ROOT),
        'checkpoint': checkpoint or osp.join(out, 'checkpoint.pth'), 'run_dir': run_dir,
    })
    if run_dir and osp.isfile(osp.join(run_dir, 'loss_curves.png')):
        shutil.copy(osp.join(run_dir, 'loss_curves.png'), osp.join(out, 'loss_curves.png'))
        results['learning_curve'] = osp.join(out, 'loss_curves.png')
    results['overlays'] = sorted(glob.glob(osp.join(out, 'vis', '*')))
    with open(osp.join(out, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    print_table(results, osp.join(out, 'results.json'))
    return results


def main(argv=None):
    args = parse_args(argv)
    args.root, args.output = osp.abspath(args.root), osp.abspath(args.output)
    try:
        methods = read_methods()
        if not args.all and args.method not in methods:
            raise QuickstartError(f"unknown method '{args.method}'; choose one of {', '.join(methods)}")
    except QuickstartError as e:
        sys.exit(f'error: {e}')
    os.makedirs(args.output, exist_ok=True)
    args.world_length = int(ensure_world(args.root)['train']['length'])
    if not args.all:
        recipe = osp.abspath(args.recipe) if args.recipe else None
        run_method(args.method, methods, args, args.output, {}, recipe)
        return
    done = {}
    for name in methods:
        if name not in done:
            done[name] = run_method(name, methods, args, osp.join(args.output, name), done)
    rows = [done[name] for name in methods]
    with open(osp.join(args.output, 'all_methods.json'), 'w') as f:
        json.dump({'minutes_per_trained_method': args.minutes, 'epochs': args.epochs, 'methods': rows}, f, indent=1)
    table = all_methods_table(rows)
    with open(osp.join(args.output, 'all_methods.md'), 'w') as f:
        f.write(table + '\n')
    print('\n' + table + f"\n\nresults: {osp.join(args.output, 'all_methods.json')}")


def _pct(value):
    return '-' if value is None else f'{value:.1f}'


def all_methods_table(rows) -> str:
    lines = ['| method | recipe | toy top-1 | mIoU trained / untrained / all-background | group-oracle mIoU | '
             'training minutes | images/s |', '| --- | --- | --- | --- | --- | --- | --- |']
    for r in rows:
        lines.append(f"| {r['method']} | `{r['recipe']}` | {_pct(r.get('trained_top1'))} | "
                     f"{r['trained_miou']:.1f} / {r['untrained_miou']:.1f} / {r['background_miou']:.1f} | "
                     f"{_pct(r['group_oracle_miou'])} | {r['train_minutes']:.1f} | {_pct(r['images_per_second'])} |")
    return '\n'.join(lines)


def print_table(r, path):
    rows = [('trained', r.get('trained_top1'), r['trained_miou']),
            ('untrained', r.get('untrained_top1'), r['untrained_miou']),
            ('all background', None, r['background_miou'])]
    print(f"\n{r['method']}:\n| model | toy top-1 | toy mIoU |\n| --- | --- | --- |")
    for name, acc, miou in rows:
        print(f'| {name} | {_pct(acc)} | {miou:.1f} |')
    print(f'\nresults: {path}')


if __name__ == '__main__':
    main()
