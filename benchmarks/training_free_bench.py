"""Training-free CLIP methods per image: ours (`training_free_predict`, what main_seg.py, the demo and the app run)
against each method's official segmentor (`predict` of SCLIP's `CLIPForSegmentation`, NACLIP's `NACLIP`; for
ClearCLIP's `ClearCLIPSegmentation`, also MaskCLIP as `model_type='MaskCLIP', ignore_residual=False`: the body of its
`predict` without the `inputs.half()` of its GPU runs), on the same deterministic random full-size ViT-B/16 weights,
the same VOC-sized images and each repository's own VOC21 protocol; the predictions are compared pixel by pixel.

    python benchmarks/training_free_bench.py --official-root DIR [--methods sclip,naclip] [--images 3]
        [--warmup 1] [--threads 2] [--clock wall|process] [--out results.json]

DIR (or $TRAINING_FREE_OFFICIAL) holds clones of github.com/wangf3014/SCLIP, mc-lan/ClearCLIP and sinahmr/NACLIP as
DIR/SCLIP, DIR/ClearCLIP and DIR/NACLIP; a method whose repository is not there is skipped with one line saying so.
Each method runs in its own process (SCLIP's and NACLIP's `clip` packages share a name), started from this one; what
the repositories import and CLIP does not use is stood in for (as tests/data/README.md describes): BLIP and gem
(ClearCLIP), pkg_resources (OpenAI's clip.py). The text embeddings use the first of the 80 templates only (setup, not
timed: 56 names x 80 prompts through the text encoder would take minutes here; the per-image work does not depend on
it). Timing: untimed warm-up images first, then the images alternately (ours, official, ours, ...), by the wall
clock or (--clock process, for a CPU shared with other jobs) the CPU time of the worker; seconds per image are
medians.
"""
import argparse
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import types

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
METHODS = ('maskclip', 'sclip', 'clearclip', 'naclip')
REPOSITORY = {'sclip': 'SCLIP', 'naclip': 'NACLIP', 'clearclip': 'ClearCLIP', 'maskclip': 'ClearCLIP'}
GITHUB = {'SCLIP': 'wangf3014/SCLIP', 'NACLIP': 'sinahmr/NACLIP', 'ClearCLIP': 'mc-lan/ClearCLIP'}
BENCHMARK = 'voc21'
IMAGE_HW = (375, 500)  # a VOC image
WEIGHT_SEED = 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--official-root', default=os.environ.get('TRAINING_FREE_OFFICIAL'),
                        help='folder with the SCLIP, ClearCLIP and NACLIP clones (default: $TRAINING_FREE_OFFICIAL)')
    parser.add_argument('--methods', default=','.join(METHODS), help=f'comma-separated subset of {METHODS}')
    parser.add_argument('--images', type=int, default=3, help='timed images per method')
    parser.add_argument('--warmup', type=int, default=1, help='untimed images first')
    parser.add_argument('--threads', type=int, default=2, help='torch CPU threads')
    parser.add_argument('--clock', choices=('wall', 'process'), default='wall',
                        help='wall clock, or CPU time of the worker process (a CPU shared with other jobs)')
    parser.add_argument('--out', help='JSON file for every measurement')
    parser.add_argument('--worker', choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument('--worker-out', help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def missing_repository(root, method):
    """-> why `method` cannot run against its official code, or None when it can."""
    if not root:
        return 'no official code: pass --official-root DIR (or set $TRAINING_FREE_OFFICIAL)'
    repo = osp.join(root, REPOSITORY[method])
    if not osp.isdir(repo):
        return f'no {REPOSITORY[method]} clone at {repo} (git clone https://github.com/{GITHUB[REPOSITORY[method]]})'
    return None


# ---------------------------------------------------------------- one method, in its own process (--worker)

def _stand_ins():
    """Modules the official code imports and its CLIP path does not use."""
    import packaging.version
    pkg_resources = types.ModuleType('pkg_resources')
    pkg_resources.packaging = packaging  # OpenAI's clip.py: packaging.version.parse(torch.__version__)
    sys.modules.setdefault('pkg_resources', pkg_resources)
    for name in ('BLIP', 'BLIP.models', 'BLIP.models.blip_retrieval', 'gem'):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules['BLIP.models.blip_retrieval'].blip_retrieval = None


def official_segmentor(method, repo, weights, protocol, template_index=0):
    """-> (segmentor, predict(inputs [1, 3, h, w], ori_shape) -> pred [H, W]) of the official code, built with the
    protocol's settings, the repository's own class-name file and one template."""
    import torch
    from mmseg.structures import SegDataSample
    sys.path.insert(0, repo)
    _stand_ins()
    names = osp.join(repo, 'configs', f'cls_{BENCHMARK}.txt')
    common = dict(name_path=names, device=torch.device('cpu'), prob_thd=protocol['prob_thd'],
                  logit_scale=protocol['logit_scale'], slide_stride=protocol['slide_stride'] or 0,
                  slide_crop=protocol['slide_crop'] or 0)
    if method in ('sclip', 'naclip'):
        module = __import__({'sclip': 'clip_segmentor', 'naclip': 'naclip'}[method])
        module.openai_imagenet_template = module.openai_imagenet_template[template_index:template_index + 1]
        extra = dict(pamr_steps=protocol['pamr_steps'], pamr_stride=protocol['pamr_stride'] or (8, 16))
        if method == 'sclip':
            seg = module.CLIPForSegmentation(clip_path=weights, area_thd=protocol['area_thd'], **common, **extra)
        else:
            seg = module.NACLIP(clip_path=weights, **common, **extra)

        def predict(inputs, ori_shape):
            sample = SegDataSample(metainfo=dict(ori_shape=ori_shape, img_shape=tuple(inputs.shape[-2:])))
            return seg.predict(inputs, [sample])[0].pred_sem_seg.data[0]
    else:
        # ClearCLIP ships its own changed open_clip; the installed one (our templates and tokenizer read from it) must
        # not stand in for it
        for name in [n for n in sys.modules if n == 'open_clip' or n.startswith('open_clip.')]:
            del sys.modules[name]
        import clearclip_segmentor as module
        from open_clip import load_openai_model
        module.openai_imagenet_template = module.openai_imagenet_template[template_index:template_index + 1]
        module.create_model = lambda *args, **kwargs: load_openai_model(weights, precision='fp32', device='cpu')
        mask = method == 'maskclip'
        seg = module.ClearCLIPSegmentation(clip_type='CLIP', vit_type='ViT-B/16',
                                           model_type='MaskCLIP' if mask else 'ClearCLIP', ignore_residual=not mask,
                                           **common)

        def predict(inputs, ori_shape):  # its predict without inputs.half() (a GPU run's)
            sample = SegDataSample(metainfo=dict(ori_shape=ori_shape, img_shape=tuple(inputs.shape[-2:])))
            logits = seg.forward_slide(inputs, [sample.metainfo], seg.slide_stride, seg.slide_crop)
            return seg.postprocess_result(logits, [sample])[0].pred_sem_seg.data[0]
    seg.eval()
    return seg, torch.no_grad()(predict)


def images(count):
    """-> `count` [H, W, 3] uint8 BGR VOC-sized pictures: smooth random colour fields (a few regions) plus noise."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(count):
        coarse = torch.rand(1, 3, 4, 5, generator=g) * 255
        smooth = F.interpolate(coarse, size=IMAGE_HW, mode='bicubic', align_corners=False)[0]
        noisy = smooth + 20 * torch.randn(3, *IMAGE_HW, generator=g)
        out.append(noisy.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(np.uint8))
    return out


def worker(args):
    """Builds ours and the official segmentor on the same weights, times both per image, compares predictions."""
    import mmcv
    import torch
    import segmentation  # noqa: F401  (the mmcv-lite shim mmseg needs, before the official code imports mmseg)
    from mmseg.models.data_preprocessor import SegDataPreProcessor

    from benchmarks.timing import elapsed
    from datasets.templates import get_templates
    from models import build_model
    from segmentation.evaluation import training_free_predict, training_free_protocol
    from utils.config import load_config
    from utils.zero_shot import class_embeddings
    sys.path.insert(0, osp.join(ROOT, 'tests'))
    from reference_weights import openai_like_state_dict

    torch.set_num_threads(args.threads)
    method = args.worker
    protocol = training_free_protocol(method, BENCHMARK)
    model = build_model(load_config(osp.join(ROOT, 'configs', 'training_free', f'{method}.yml')).model).eval()
    model.clip.load_state_dict(openai_like_state_dict(model.clip.state_dict(), seed=WEIGHT_SEED))
    with tempfile.TemporaryDirectory() as tmp:
        weights = osp.join(tmp, 'ViT-B-16.pt')
        torch.save(model.clip.state_dict(), weights)
        official, official_predict = official_segmentor(method, osp.join(args.official_root, REPOSITORY[method]),
                                                        weights, protocol)
    template = get_templates('full')[0]
    text = class_embeddings(model, protocol['names'], [template])
    text_diff = float((text - official.query_features).abs().max())

    def ours_predict(inputs, ori_shape):
        return training_free_predict(model, inputs, text, protocol['query_idx'], ori_shape, protocol['slide_crop'],
                                     protocol['slide_stride'], protocol['logit_scale'], protocol['prob_thd'],
                                     protocol['area_thd'], protocol['pamr_steps'], protocol['pamr_stride'])['pred']

    pre = SegDataPreProcessor(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323], bgr_to_rgb=True)
    pictures = images(args.warmup + args.images)
    inputs = []
    for bgr in pictures:
        resized = mmcv.imrescale(bgr, (2048, protocol['short_side']), interpolation='bilinear', backend='cv2')
        inputs.append(pre({'inputs': [torch.from_numpy(resized).permute(2, 0, 1).contiguous()]}, False)['inputs'])
    times = {'ours': [], 'official': []}
    mismatch, pixels, classes = 0, 0, set()
    for i, x in enumerate(inputs):
        preds = {}
        for name, fn in (('ours', ours_predict), ('official', official_predict)):
            result = {}
            seconds = elapsed(lambda: result.setdefault('pred', fn(x, IMAGE_HW)), 'cpu', args.clock)
            preds[name] = result['pred']
            if i >= args.warmup:
                times[name].append(seconds)
        mismatch += int((preds['ours'] != preds['official']).sum())
        pixels += preds['ours'].numel()
        classes |= set(preds['ours'].unique().tolist())
    ours_s, official_s = statistics.median(times['ours']), statistics.median(times['official'])
    result = dict(method=method, repository=REPOSITORY[method], benchmark=BENCHMARK, image_hw=list(IMAGE_HW),
                  input_hw=list(inputs[0].shape[-2:]), num_queries=len(protocol['names']),
                  num_classes=max(protocol['query_idx']) + 1, slide_crop=protocol['slide_crop'],
                  slide_stride=protocol['slide_stride'],
                  pamr_steps=protocol['pamr_steps'], images=args.images, warmup=args.warmup, threads=args.threads,
                  clock=args.clock,
                  ours_s=round(ours_s, 3), official_s=round(official_s, 3), speedup=round(official_s / ours_s, 2),
                  times_s={k: [round(t, 3) for t in v] for k, v in times.items()}, label_mismatch=mismatch,
                  pixels=pixels, classes_predicted=len(classes), text_max_abs_diff=text_diff)
    with open(args.worker_out, 'w') as f:
        json.dump(result, f)


# ---------------------------------------------------------------- the run: one process per method

def format_table(rows):
    lines = ['| method (official code) | input (from 375x500) | windows | queries / classes | ours s/image | '
             'official s/image | official / ours | pixels differing | classes predicted |',
             '|---|---|---|---|---|---|---|---|---|']
    for r in rows:
        windows = f"{r['slide_crop']}/{r['slide_stride']}" if r['slide_crop'] else 'whole image'
        windows += f" + PAMR {r['pamr_steps']}" if r['pamr_steps'] else ''
        lines.append(f"| {r['method']} ({r['repository']}) | {r['input_hw'][0]}x{r['input_hw'][1]} | {windows} | "
                     f"{r['num_queries']} / {r['num_classes']} | {r['ours_s']:.2f} | {r['official_s']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['label_mismatch']} of {r['pixels']} | {r['classes_predicted']} |")
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    methods = [m for m in args.methods.split(',') if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f'training_free_bench: --methods: unknown {unknown}; choose from {METHODS}')
    if args.images < 1 or args.warmup < 0 or args.threads < 1:
        raise SystemExit('training_free_bench: --images and --threads must be positive, --warmup not negative')
    rows, skipped = [], {}
    for method in methods:
        reason = missing_repository(args.official_root, method)
        if reason:
            skipped[method] = reason
            print(f'skip {method}: {reason}', flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            out = osp.join(tmp, 'result.json')
            command = [sys.executable, '-m', 'benchmarks.training_free_bench', '--worker', method,
                       '--worker-out', out, '--official-root', osp.abspath(args.official_root),
                       '--images', str(args.images), '--warmup', str(args.warmup), '--threads', str(args.threads),
                       '--clock', args.clock]
            print(f'[{method}] running against {REPOSITORY[method]} ...', file=sys.stderr, flush=True)
            done = subprocess.run(command, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
            if done.returncode or not osp.isfile(out):
                skipped[method] = f'the {REPOSITORY[method]} run failed (exit {done.returncode}, see above)'
                print(f'skip {method}: {skipped[method]}', flush=True)
                continue
            with open(out) as f:
                rows.append(json.load(f))
    if rows:
        print(format_table(rows))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump({'rows': rows, 'skipped': skipped}, f, indent=1)
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
