"""Web demo (Gradio): upload an image, type class names, choose the background threshold; see the overlay, the
label legend and the final groups. Runs on CPU and offline.

    python demo/app.py --resume CKPT [--cfg CFG] [--dataset voc] [--port 7860]
    python demo/app.py            # the quickstart's toy model if present, else random weights (and says which)
    python demo/app.py --method sclip --dataset voc21 --resume ViT-B-16.pt   # a training-free method's protocol

With a training-free method the page's class names are the preset's: left as shown, they run with its class-name file
(several names per class, max over names); typed names are one name per class. The threshold is its prob_thd. The
protocol is shown with every result.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import List, Optional, Tuple

# No analytics, update checks or hub calls: the app must work without internet.
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('HF_HUB_DISABLE_TELEMETRY', '1')

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from demo import visualize as vis  # noqa: E402
from demo.inference import (ROOT, DemoError, Segmenter, Vocabulary, all_preset_names, free_vocabulary,  # noqa: E402
                            load_model, parse_vocab)
from models.training_free import TRAINING_FREE_METHODS  # noqa: E402

EXAMPLE_DIR = osp.join(ROOT, 'demo', 'examples')
# toy-world scenes for the examples: (seed, class indices of tools/toy_world.CLASSES, bottom to top)
EXAMPLE_SCENES = ((1, (0, 3)), (2, (1, 4, 6)), (3, (2, 7, 5)))
EXAMPLE_UPSCALE = 3
DEFAULT_CFG = osp.join(ROOT, 'configs', 'group_vit_gcc_yfcc_30e.yml')


def parse_args(argv=None):
    parser = argparse.ArgumentParser('GroupViT / PGSeg web demo', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--resume', help='checkpoint; default: the quickstart toy model, else random weights')
    parser.add_argument('--cfg', help='model config (default: the one stored in --resume, else the published '
                        'GroupViT config)')
    parser.add_argument('--quickstart-ckpt', default=osp.join('output', 'quickstart', 'checkpoint.pth'),
                        help='toy model used when --resume is not given')
    parser.add_argument('--quickstart-cfg', default=osp.join('output', 'quickstart', 'config.yml'))
    parser.add_argument('--method', choices=tuple(TRAINING_FREE_METHODS),
                        help='a training-free CLIP method: configs/training_free/METHOD.yml unless --cfg; --resume '
                        "is then OpenAI's ViT-B-16.pt (optional: random weights without it)")
    parser.add_argument('--dataset', choices=all_preset_names(), metavar='PRESET',
                        help='protocol preset and default class names (default: toy for the toy model, else voc; '
                        "a training-free method: its published protocol for that benchmark, e.g. voc21)")
    parser.add_argument('--host', default='127.0.0.1')
    parser.add_argument('--port', type=int, default=int(os.environ.get('GRADIO_SERVER_PORT', 7860)),
                        help="default: $GRADIO_SERVER_PORT (Gradio's own setting), else 7860")
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    return parser.parse_args(argv)


def stored_config(ckpt: str):
    from utils.checkpoint import CheckpointError, load_checkpoint
    try:
        cfg = load_checkpoint(ckpt).get('config')
    except (CheckpointError, OSError) as e:
        raise DemoError(str(e)) from None
    if cfg is None or 'model' not in cfg:
        raise DemoError(f'{ckpt} stores no config: pass --cfg')
    return cfg


def choose_model(args) -> Tuple[object, Optional[str], str, str]:
    """-> (config, checkpoint or None, what is loaded in words, default preset)."""
    from utils.config import ConfigError, load_config
    try:
        if args.method:
            cfg_path = args.cfg or osp.join(ROOT, 'configs', 'training_free', f'{args.method}.yml')
            cfg = load_config(cfg_path)
            if cfg.model.get('type', '').lower() != args.method:
                raise DemoError(f"--method {args.method}, but {cfg_path} is a {cfg.model.get('type')} config")
            said = f'{args.method} with CLIP weights {args.resume}' if args.resume else (
                f'{args.method} with RANDOM weights: no --resume (OpenAI\'s ViT-B-16.pt)')
            return cfg, args.resume, said, 'voc'
        if args.resume:
            cfg = load_config(args.cfg) if args.cfg else stored_config(args.resume)
            return cfg, args.resume, f'checkpoint {args.resume}', 'voc'
        if osp.isfile(args.quickstart_ckpt) and osp.isfile(args.quickstart_cfg):
            return (load_config(args.cfg or args.quickstart_cfg), args.quickstart_ckpt,
                    f'the quickstart toy model {args.quickstart_ckpt}', 'toy')
        cfg_path = args.cfg or DEFAULT_CFG
        return load_config(cfg_path), None, (f'RANDOM weights ({cfg_path}): no --resume and no quickstart model '
                                             f'at {args.quickstart_ckpt}'), 'voc'
    except ConfigError as e:
        raise DemoError(str(e)) from None


def ensure_examples(folder: str = EXAMPLE_DIR) -> List[str]:
    """Toy-world scenes as example images (written once; 64 px scenes upscaled x3 with nearest neighbours)."""
    from tools.toy_world import render_scene
    os.makedirs(folder, exist_ok=True)
    paths = []
    for seed, labels in EXAMPLE_SCENES:
        path = osp.join(folder, f'toy_scene_{seed}.png')
        if not osp.isfile(path):
            scene = render_scene(np.random.default_rng(seed), 64, labels=list(labels))
            big = scene.image.repeat(EXAMPLE_UPSCALE, 0).repeat(EXAMPLE_UPSCALE, 1)
            Image.fromarray(big).save(path)
        paths.append(path)
    return paths


def summary(labels: np.ndarray, names: List[str]) -> str:
    """'name: share of pixels' for every predicted label, largest first."""
    values, counts = np.unique(labels, return_counts=True)
    order = np.argsort(-counts)
    return '\n'.join(f'{names[values[i]]}: {100 * counts[i] / labels.size:.1f}% of pixels' for i in order)


class App:
    """Holds the segmenter; `segment` is the Gradio callback."""

    def __init__(self, segmenter: Segmenter):
        self.segmenter = segmenter

    def vocabulary(self, names_text: str, with_bg: bool) -> Vocabulary:
        """The typed names as one name per class; a training-free preset's own names left as shown (and its
        background choice) keep the preset's query names (several per class)."""
        names = parse_vocab(names_text or '')
        preset = self.segmenter.default_vocabulary()
        if preset.queries is not None and names == preset.prompts and bool(with_bg) == preset.with_bg:
            return preset
        return free_vocabulary(names, bool(with_bg))

    def segment(self, image, names_text, bg_thresh, with_bg):
        """-> (overlay, labelled picture, group picture or None, labels found, protocol line)."""
        import gradio as gr
        if image is None:
            raise gr.Error('upload an image first')
        try:
            vocab = self.vocabulary(names_text, with_bg)
        except DemoError as e:
            raise gr.Error(str(e))
        image = np.asarray(Image.fromarray(image).convert('RGB'))
        pred = self.segmenter.predict(image, vocab, bg_thresh)
        palette = vis.class_palette(len(pred.names), pred.with_bg)
        overlay = vis.overlay(image, pred.labels, palette, skip=(0, ) if pred.with_bg else ())
        labelled = vis.labelled_overlay(image, pred.labels, pred.names, palette, pred.with_bg)
        groups = None  # a method without groups (TCL, CLIP) leaves the group picture empty
        if pred.groups:
            groups = vis.group_label_picture(image, pred.groups[-1], pred.group_names, pred.num_groups[-1],
                                             sum(pred.num_groups[:-1]))
        return overlay, labelled, groups, summary(pred.labels, pred.names), self.segmenter.protocol(vocab, bg_thresh)


def build_ui(app: App, description: str, examples: List[str]):
    import gradio as gr
    vocab = app.segmenter.default_vocabulary()
    default_names = ', '.join(vocab.prompts)
    with gr.Blocks(title='PGSeg / GroupViT zero-shot segmentation', analytics_enabled=False) as ui:
        gr.Markdown('## Zero-shot segmentation with GroupViT / PGSeg\n'
                    f'Model: **{description}** · protocol preset `{app.segmenter.preset}` · device '
                    f'`{app.segmenter.device}`')
        with gr.Row():
            with gr.Column():
                image = gr.Image(type='numpy', label='Image', sources=['upload', 'clipboard'], elem_id='input-image')
                names = gr.Textbox(value=default_names, label='Class names (comma separated)', lines=2,
                                   elem_id='class-names')
                bg_thresh = gr.Slider(0.0, 1.0, value=app.segmenter.default_bg_thresh, step=0.01,
                                      label='Background threshold', elem_id='bg-thresh')
                with_bg = gr.Checkbox(value=vocab.with_bg or not app.segmenter.training_free, label='Background class',
                                      elem_id='with-bg')
                run = gr.Button('Segment', variant='primary', elem_id='segment')
            with gr.Column():
                overlay = gr.Image(label='Overlay', format='png', interactive=False, elem_id='overlay')
                found = gr.Textbox(label='Labels found', lines=4, interactive=False, elem_id='labels')
                protocol = gr.Textbox(label='Protocol', lines=3, interactive=False, elem_id='protocol')
        with gr.Row():
            labelled = gr.Image(label='Labels and legend', format='png', interactive=False, elem_id='labelled')
            groups = gr.Image(label='Final groups: best class and score', format='png', interactive=False,
                              elem_id='groups')
        run.click(app.segment, [image, names, bg_thresh, with_bg], [overlay, labelled, groups, found, protocol])
        if examples:
            gr.Examples([[p, default_names] for p in examples], [image, names], label='Examples (toy world)')
    return ui


def main(argv=None):
    args = parse_args(argv)
    try:
        cfg, ckpt, description, preset = choose_model(args)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            model = load_model(cfg, ckpt)
        segmenter = Segmenter(model, cfg, args.dataset or preset, device=args.device)
    except DemoError as e:
        raise SystemExit(f'app: {e}')
    print(f'app: model = {description}', flush=True)
    import gradio as gr
    ui = build_ui(App(segmenter), description, ensure_examples())
    ui.launch(server_name=args.host, server_port=args.port, share=False, ssr_mode=False, show_error=True,
              theme=gr.themes.Default(font=['system-ui', 'sans-serif'], font_mono=['monospace']))


if __name__ == '__main__':
    main()
