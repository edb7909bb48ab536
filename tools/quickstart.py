"""The quickstart: the whole pipeline on the toy world, on CPU, in about a quarter of an hour.

    python tools/quickstart.py [--minutes 15] [--recipe configs/toy/pgseg_tiny.yml]

toy world -> train the tiny model with main_pg_seg.py -> zero-shot segmentation (the benchmark path of
main_seg.py) and zero-shot classification of the trained and the untrained model -> overlay pictures, the learning
curve and output/quickstart/results.json (percent).
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
from omegaconf import OmegaConf  # noqa: E402

from datasets import build_img_transform, build_val_loader  # noqa: E402
from models import build_model  # noqa: E402
from segmentation.evaluation import evaluate_background, evaluate_seg, load_benchmark  # noqa: E402
from tools.make_toy_data import make_toy_world  # noqa: E402
from utils.checkpoint import build_and_load, save_checkpoint  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.logging import setup_logger  # noqa: E402
from utils.misc import seed_everything  # noqa: E402
from utils.precision import Precision  # noqa: E402
from utils.resume import epoch_checkpoints  # noqa: E402
from utils.zero_shot import class_prompts, run_cls_eval  # noqa: E402

TOY_BENCHMARK = osp.join(ROOT, 'segmentation/configs/_base_/datasets/toy.py')
BG_GRID = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--minutes', type=float, default=15, help='training time budget (sets the number of epochs)')
    p.add_argument('--recipe', default=osp.join(ROOT, 'configs/toy/quickstart.yml'), help='toy training config')
    p.add_argument('--root', default=osp.join(ROOT, 'local_data/toy'), help='toy world folder (written if missing)')
    p.add_argument('--output', default=osp.join(ROOT, 'output/quickstart'))
    p.add_argument('--epochs', type=int, help='train this many epochs instead of fitting --minutes')
    p.add_argument('--threads', type=int, default=1,
                   help='torch threads for evaluation (1: small images gain nothing from more, and lose under load)')
    p.add_argument('--run-dir', help='evaluate this finished training run instead of training a new one')
    return p.parse_args(argv)


def ensure_world(root):
    if osp.isfile(osp.join(root, 'meta.json')):
        print(f'toy world: {root} (existing)')
    else:
        t0 = time.time()
        make_toy_world(root)
        print(f'toy world: wrote {root} in {time.time() - t0:.0f}s')
    with open(osp.join(root, 'meta.json')) as f:
        return json.load(f)


def measure_throughput(cfg, steps=6, warmup=2):
    """Images/s of forward + backward + AdamW on random inputs shaped like a training batch."""
    seed_everything(0)
    model = build_model(cfg.model).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    B, size, L = int(cfg.data.batch_size), int(cfg.data.img_aug.img_size), int(cfg.data.text_aug.max_seq_len)
    k = int(cfg.model.multi_label)
    image = torch.randn(B, 3, size, size)
    text = torch.randint(1, 1000, (B, 1 + k, L) if k else (B, L))
    text[..., L // 2] = 49407
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        loss = sum(model.forward_train(image, text).values())
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    timed = sorted(times[warmup:])  # the first steps pay for allocations and thread start-up
    return B / timed[len(timed) // 2]


def train(args, cfg, length):
    if args.epochs:
        epochs = args.epochs
    else:
        ips = measure_throughput(cfg)  # at torch's default thread count, as main_pg_seg.py trains
        # 0.7: the loader worker shares the cores; logging and per-epoch checkpoints share the budget
        epochs = max(1, int(0.7 * args.minutes * 60 * ips / length))
        print(f'training speed here ~{ips:.0f} images/s -> {epochs} epochs of {length} images in ~{args.minutes:g} min')
    runs = osp.join(args.output, 'runs')
    # the recipe's length is the default world's; an epoch must cover the world that is there
    cmd = [sys.executable, osp.join(ROOT, 'main_pg_seg.py'), args.recipe, '--output', runs, '--tag', 'quickstart',
           '--opts', f'data.root={args.root}', f'train.epochs={epochs}', f'data.dataset.meta.toy_train.length={length}']
    print('train:', ' '.join(cmd))
    t0 = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT)
    print(f'training took {(time.time() - t0) / 60:.1f} min')
    run_dirs = sorted(glob.glob(osp.join(runs, '*', 'quickstart')), key=osp.getmtime)
    return run_dirs[-1], epochs, time.time() - t0


def top1(cfg, model):
    loader, _ = build_val_loader(cfg.data, build_img_transform(False, cfg.data.img_aug), 0, 1)
    results = run_cls_eval(cfg, model, torch.device('cpu'), Precision('O0', 'cpu'), loader, class_prompts(cfg))
    return results[cfg.evaluate.cls.template]['acc1']


def segment(model, root, bg_thresh=None, split='val', **kw):
    """mIoU on the toy set; without bg_thresh it is chosen on the 'tune' split (never on 'val')."""
    if bg_thresh is None:
        scores = {b: segment(model, root, b, 'tune')['mIoU'] for b in BG_GRID}
        bg_thresh = max(scores, key=scores.get)
    bench = load_benchmark(TOY_BENCHMARK, [f'data_root={root}/voc', f'test_cfg.bg_thresh={bg_thresh}'])
    result = evaluate_seg(model, None, benchmark=bench, split=split, progress=False, **kw)
    result['bg_thresh'] = bg_thresh
    return result


def main(argv=None):
    args = parse_args(argv)
    args.root, args.output = osp.abspath(args.root), osp.abspath(args.output)
    os.makedirs(args.output, exist_ok=True)
    meta = ensure_world(args.root)
    cfg = load_config(args.recipe)
    cfg.data.root = args.root
    if args.run_dir:
        run_dir, epochs, train_seconds = osp.abspath(args.run_dir), None, 0.
    else:
        run_dir, epochs, train_seconds = train(args, cfg, meta['train']['length'])
    torch.set_num_threads(args.threads)

    setup_logger(None, 0)
    cfg = OmegaConf.load(osp.join(run_dir, 'config.yaml'))
    checkpoint = epoch_checkpoints(run_dir)[0][1]  # newest = the final model, not the best moment of the run
    trained = build_and_load(cfg.model, checkpoint)
    # the demo and the web app pick the quickstart model up from these two files
    save_checkpoint(osp.join(args.output, 'checkpoint.pth'), trained.state_dict())
    model_cfg = OmegaConf.merge(cfg, {'model_name': 'quickstart', 'output': 'output', 'tag': 'default'})
    # a run's own name and folder would nest the folders of main_pg_seg.py runs on this config inside the run
    OmegaConf.save(model_cfg, osp.join(args.output, 'config.yml'))
    seed_everything(int(cfg.seed))  # main_pg_seg.py seeds like this before building: the run's starting weights
    untrained = build_model(cfg.model)

    shutil.rmtree(osp.join(args.output, 'vis'), ignore_errors=True)
    seg_trained = segment(trained, args.root, vis=4, output_dir=args.output)
    seg_untrained = segment(untrained, args.root)
    bench = load_benchmark(TOY_BENCHMARK, [f'data_root={args.root}/voc'])
    background = evaluate_background(benchmark=bench)
    results = {
        'trained_miou': seg_trained['mIoU'], 'untrained_miou': seg_untrained['mIoU'],
        'background_miou': background['mIoU'], 'trained_top1': top1(cfg, trained),
        'untrained_top1': top1(cfg, untrained),
        'bg_thresh': {'trained': seg_trained['bg_thresh'], 'untrained': seg_untrained['bg_thresh'],
                      'chosen_on': 'tune split'},
        'epochs': epochs, 'train_minutes': round(train_seconds / 60, 2), 'recipe': osp.relpath(args.recipe, ROOT),
        'checkpoint': checkpoint, 'run_dir': run_dir,
    }
    curve = osp.join(run_dir, 'loss_curves.png')
    if osp.isfile(curve):
        shutil.copy(curve, osp.join(args.output, 'loss_curves.png'))
        results['learning_curve'] = osp.join(args.output, 'loss_curves.png')
    results['overlays'] = sorted(glob.glob(osp.join(args.output, 'vis', '*')))
    with open(osp.join(args.output, 'results.json'), 'w') as f:
        json.dump(results, f, indent=1)
    print_table(results, osp.join(args.output, 'results.json'))


def print_table(r, path):
    rows = [('trained', r['trained_top1'], r['trained_miou']), ('untrained', r['untrained_top1'], r['untrained_miou']),
            ('all background', None, r['background_miou'])]
    print('\n| model | toy top-1 | toy mIoU |\n| --- | --- | --- |')
    for name, acc, miou in rows:
        print(f"| {name} | {'-' if acc is None else f'{acc:.1f}'} | {miou:.1f} |")
    print(f'\nresults: {path}')


if __name__ == '__main__':
    main()
