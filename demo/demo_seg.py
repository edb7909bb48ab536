"""Zero-shot segmentation of your own images with a GroupViT / PGSeg checkpoint, or a training-free CLIP method.

    python demo/demo_seg.py --cfg CFG --resume CKPT --input IMG_OR_FOLDER_OR_GLOB --output_dir DIR \\
        [--dataset voc | --vocab "dog, grass, sky"] [--bg-thresh 0.9] --vis input_pred_label group_labels
    python demo/demo_seg.py --method sclip --dataset voc21 --resume ViT-B-16.pt --input IMG --output_dir DIR

--method maskclip|sclip|clearclip|naclip takes configs/training_free/<method>.yml (or give --cfg) and segments with
that method's published full-image rule for --dataset (its benchmark: voc21, context60, coco_object, voc20,
city_scapes, context59, ade20k, coco_stuff164k, or a preset name such as sclip_voc21), as main_seg.py evaluates it;
--bg-thresh is then its prob_thd. Writes DIR/<vis mode>/<input name>.png for every input and vis mode, and prints the
protocol.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from argparse import Namespace

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from demo import visualize as vis  # noqa: E402
from demo.inference import (ROOT, DemoError, Segmenter, all_preset_names, free_vocabulary, list_inputs,  # noqa: E402
                            load_model, parse_vocab, read_image, training_free_method_name)
from models.training_free import TRAINING_FREE_METHODS  # noqa: E402

TRAINING_FREE = tuple(TRAINING_FREE_METHODS)  # --method choices
VIS_MODES = ('input', 'pred', 'input_pred', 'input_pred_label', 'all_groups', 'first_group', 'final_group',
             'group_labels')
GROUP_MODES = ('all_groups', 'first_group', 'final_group', 'group_labels')


def parse_args(argv=None):
    parser = argparse.ArgumentParser('GroupViT / PGSeg zero-shot segmentation demo',
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument('--cfg', help='model config (.yml); default with --method: configs/training_free/METHOD.yml')
    parser.add_argument('--method', choices=TRAINING_FREE, help='a training-free CLIP method (its config unless '
                        '--cfg); --dataset then names its published protocol')
    parser.add_argument('--opts', nargs='+', default=None, help="config overrides, 'key=value'")
    parser.add_argument('--resume', help='checkpoint (.pth, .safetensors or folder); without it: random weights')
    parser.add_argument('--input', nargs='+', required=True, help='image files, folders or glob patterns')
    parser.add_argument('--output_dir', '--output-dir', dest='output_dir', required=True, help='output folder')
    parser.add_argument('--vis', nargs='+', default=['input_pred_label'], choices=VIS_MODES, metavar='MODE',
                        help=f'what to write, any of: {", ".join(VIS_MODES)}')
    parser.add_argument('--dataset', default='voc', choices=all_preset_names(), metavar='PRESET',
                        help='benchmark preset: its class names (unless --vocab), prompts, resize, sliding window '
                        'and background threshold (a training-free method: its published protocol for that '
                        f'benchmark); one of {", ".join(all_preset_names())}')
    parser.add_argument('--vocab', help='free class names, "dog, grass, sky", or a text file with one name a line')
    parser.add_argument('--no-bg', action='store_true', help='with --vocab: no background output')
    parser.add_argument('--bg-thresh', type=float, help="background threshold (default: the preset's; a training-free "
                        "preset's prob_thd)")
    parser.add_argument('--seg-opts', nargs='+', default=(), help="preset overrides, e.g. 'test_cfg.mode=whole'")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def output_names(paths):
    """Input paths -> unique output stems: the file stem, or the path below the inputs' common folder."""
    stems = [osp.splitext(osp.basename(p))[0] for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    root = osp.commonpath([osp.abspath(osp.dirname(p)) for p in paths])
    return [osp.splitext(osp.relpath(osp.abspath(p), root))[0].replace(os.sep, '__') for p in paths]


def render(mode, image, pred):
    """-> {suffix: PIL image} for one vis mode ('' for the main picture)."""
    palette = vis.class_palette(len(pred.names), pred.with_bg)
    skip = (0, ) if pred.with_bg else ()
    offsets = np.cumsum([0] + pred.num_groups)
    if mode == 'input':
        return {'': Image.fromarray(image)}
    if mode == 'pred':
        return {'': vis.label_png(pred.labels, palette)}
    if mode == 'input_pred':
        return {'': Image.fromarray(vis.overlay(image, pred.labels, palette, skip=skip))}
    if mode == 'input_pred_label':
        return {'': Image.fromarray(vis.labelled_overlay(image, pred.labels, pred.names, palette, pred.with_bg))}
    if mode in GROUP_MODES and not pred.groups:
        return {}
    if mode == 'group_labels':
        return {'': Image.fromarray(vis.group_label_picture(image, pred.groups[-1], pred.group_names,
                                                            pred.num_groups[-1], offsets[-2]))}
    stages = {'first_group': [0], 'final_group': [len(pred.groups) - 1]}.get(mode, range(len(pred.groups)))
    suffix = (lambda s: f'_stage{s}') if mode == 'all_groups' else (lambda s: '')
    return {suffix(s): Image.fromarray(vis.group_overlay(image, pred.groups[s], pred.num_groups[s], offsets[s]))
            for s in stages}


def write_outputs(output_dir, name, modes, image, pred):
    written = []
    for mode in modes:
        for suffix, picture in render(mode, image, pred).items():
            path = osp.join(output_dir, mode, f'{name}{suffix}.png')
            os.makedirs(osp.dirname(path), exist_ok=True)
            picture.save(path)
            written.append(path)
    return written


def collect_inputs(specs):
    """-> (paths, problems): every spec's images; a spec that gives none is a problem, the others still run."""
    paths, problems = [], []
    for spec in specs:
        try:
            paths.extend(p for p in list_inputs(spec) if p not in paths)
        except DemoError as e:
            problems.append(str(e))
    return paths, problems


def config_path(args) -> str:
    """--cfg, else the training-free config of --method; DemoError when neither is given."""
    if args.cfg:
        return args.cfg
    if args.method:
        return osp.join(ROOT, 'configs', 'training_free', f'{args.method}.yml')
    raise DemoError('give the model config (--cfg CFG) or a training-free method (--method sclip)')


def build_segmenter(args):
    from utils.config import ConfigError, get_config
    try:
        cfg = get_config(Namespace(cfg=config_path(args), opts=args.opts))
    except ConfigError as e:
        raise DemoError(str(e)) from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        model = load_model(cfg, args.resume)
    for w in caught:
        print(f'WARNING: {w.message}', file=sys.stderr)
    method = training_free_method_name(model)
    if args.method and method != args.method:
        raise DemoError(f'--method {args.method}, but {config_path(args)} builds {method or type(model).__name__}')
    return Segmenter(model, cfg, args.dataset, args.seg_opts, args.device)


def run(args):
    """-> number of inputs that failed (each reported in one line)."""
    vocab_names = parse_vocab(args.vocab) if args.vocab is not None else None
    paths, problems = collect_inputs(args.input)
    if not paths:
        raise DemoError('; '.join(problems) or 'no input images')
    for problem in problems:
        print(f'demo_seg: {problem}', file=sys.stderr)
    segmenter = build_segmenter(args)
    vocab = segmenter.default_vocabulary() if vocab_names is None else free_vocabulary(vocab_names, not args.no_bg)
    with_groups = any(m in GROUP_MODES for m in args.vis)
    failed = len(problems)
    names = output_names(paths)
    for path, name in tqdm(list(zip(paths, names)), desc='segmenting', unit='image', disable=len(paths) < 2):
        try:
            image = read_image(path)
        except DemoError as e:
            tqdm.write(f'demo_seg: {e}', file=sys.stderr)
            failed += 1
            continue
        pred = segmenter.predict(image, vocab, args.bg_thresh, with_groups=with_groups)
        if with_groups and not pred.groups:
            tqdm.write(f'demo_seg: {type(segmenter.model).__name__} has no groups: no group pictures', file=sys.stderr)
            with_groups = False
        write_outputs(args.output_dir, name, args.vis, image, pred)
    print(f'wrote {len(args.vis)} vis mode(s) for {len(paths) - (failed - len(problems))} image(s) to '
          f'{args.output_dir} ({len(vocab.names)} classes{", background first" if vocab.with_bg else ""})')
    print('protocol: ' + segmenter.protocol(vocab, args.bg_thresh))
    return failed


def main(argv=None):
    args = parse_args(argv)
    try:
        failed = run(args)
    except DemoError as e:
        raise SystemExit(f'demo_seg: {e}')
    if failed:
        raise SystemExit(1)


if __name__ == '__main__':
    main()
