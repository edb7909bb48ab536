"""demo/app.py without a browser: which model it loads, the callback's outputs, the example images."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

from demo import app  # noqa: E402
from demo.inference import Segmenter, load_model, preset_names  # noqa: E402
from demo_helpers import sharp_checkpoint, toy_images, two_scene_image  # noqa: E402
from utils.checkpoint import save_checkpoint  # noqa: E402
from utils.config import load_config  # noqa: E402


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp('app')
    cfg, ckpt = sharp_checkpoint(folder)
    return {'cfg': cfg, 'ckpt': ckpt, 'dir': folder, 'images': toy_images(folder / 'toy', count=2)}


def test_model_choice_resume_then_quickstart_then_random(tiny, tmp_path):
    quick_ckpt, quick_cfg = tmp_path / 'quickstart' / 'checkpoint.pth', tmp_path / 'quickstart' / 'config.yml'
    flags = ['--quickstart-ckpt', str(quick_ckpt), '--quickstart-cfg', str(quick_cfg)]

    cfg, ckpt, said, preset = app.choose_model(app.parse_args(flags))
    assert ckpt is None and 'RANDOM weights' in said and preset == 'voc'
    assert cfg.model.img_encoder.embed_dim == 384

    quick_ckpt.parent.mkdir()
    shutil.copy(tiny['ckpt'], quick_ckpt)
    shutil.copy(tiny['cfg'], quick_cfg)
    cfg, ckpt, said, preset = app.choose_model(app.parse_args(flags))
    assert ckpt == str(quick_ckpt) and 'quickstart toy model' in said and preset == 'toy'

    cfg, ckpt, said, preset = app.choose_model(app.parse_args(flags + ['--resume', tiny['ckpt'], '--cfg', tiny['cfg']]))
    assert ckpt == tiny['ckpt'] and said == f'checkpoint {tiny["ckpt"]}' and preset == 'voc'

    with pytest.raises(Exception, match='stores no config'):
        app.choose_model(app.parse_args(['--resume', tiny['ckpt']]))
    with_config = save_checkpoint(str(tmp_path / 'with_cfg.pth'), load_model(load_config(tiny['cfg']),
                                                                              tiny['ckpt']).state_dict(),
                                  extra={'config': load_config(tiny['cfg'])})
    cfg, _, _, _ = app.choose_model(app.parse_args(['--resume', with_config]))
    assert cfg.model.img_encoder.embed_dim == 32


def test_segment_callback_outputs(tiny):
    import gradio as gr
    cfg = load_config(tiny['cfg'])
    ui_app = app.App(Segmenter(load_model(cfg, tiny['ckpt']), cfg, 'toy'))
    image = two_scene_image(tiny['images'])
    names = 'circle, square, triangle, star, ring, cross, heart, diamond'
    overlay, labelled, groups, found, protocol = ui_app.segment(image, names, 0.0, True)
    assert overlay.shape == image.shape and not np.array_equal(overlay, image) and 'protocol=' in protocol
    assert labelled.shape[0] > image.shape[0] and groups.shape[0] > image.shape[0]
    lines = found.splitlines()
    assert len(lines) > 1 and all(line.split(':')[0] in names.split(', ') for line in lines)
    shares = [float(line.split(': ')[1].split('%')[0]) for line in lines]
    assert abs(sum(shares) - 100) < 0.5 and shares == sorted(shares, reverse=True)
    with pytest.raises(gr.Error):
        ui_app.segment(image, ' , ', 0.5, True)
    with pytest.raises(gr.Error):
        ui_app.segment(None, 'circle', 0.5, True)
    ui = app.build_ui(ui_app, 'test model', app.ensure_examples(str(tiny['dir'] / 'examples')))
    assert isinstance(ui, gr.Blocks)


def test_every_preset_gives_the_page_its_class_names(tiny, tmp_path, monkeypatch):
    """The page's default names come from the preset; the toy preset's from local_data/toy/classes.json under the
    folder the app runs in (as after make quickstart), a (classes, palette) file."""
    import json
    from tools.make_toy_data import make_toy_world
    cfg = load_config(tiny['cfg'])
    model = load_model(cfg, tiny['ckpt'])
    monkeypatch.chdir(tmp_path)
    make_toy_world('local_data/toy', train_samples=1, samples_per_shard=1, cls_samples=1, seg_val=1, seg_tune=1)
    classes_file = tmp_path / 'local_data' / 'toy' / 'classes.json'
    renamed = dict(json.loads(classes_file.read_text()), classes=[f'shape {i}' for i in range(8)])
    classes_file.write_text(json.dumps(renamed))
    for preset in preset_names():
        prompts = Segmenter(model, cfg, preset).default_vocabulary().prompts
        assert prompts and all(isinstance(name, str) and name for name in prompts), preset
    assert Segmenter(model, cfg, 'toy').default_vocabulary().prompts == renamed['classes']


def test_examples_are_generated_once(tmp_path):
    paths = app.ensure_examples(str(tmp_path))
    assert len(paths) == len(app.EXAMPLE_SCENES) and all(os.path.isfile(p) for p in paths)
    sizes = {Image.open(p).size for p in paths}
    assert sizes == {(64 * app.EXAMPLE_UPSCALE, 64 * app.EXAMPLE_UPSCALE)}
    before = [os.path.getmtime(p) for p in paths]
    assert app.ensure_examples(str(tmp_path)) == paths and [os.path.getmtime(p) for p in paths] == before
    shipped = app.ensure_examples()
    assert all(np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(paths, shipped))
