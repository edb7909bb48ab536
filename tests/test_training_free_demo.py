"""The demo and the web app with the training-free methods: each method's published preset gives the label map
main_seg.py's segmentor gives on the same image (multi-name classes, area_thd, PAMR, windows or the whole image);
typed names are one name per class; the protocol comes with every result; bad input is one line."""
import os

import numpy as np
import pytest
import torch
from mmengine.dataset import pseudo_collate
from PIL import Image

os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')

import segmentation  # noqa: F401,E402
from conftest import build_tiny, tiny_config_path  # noqa: E402
from demo import app, demo_seg  # noqa: E402
from demo.inference import DemoError, Segmenter, free_vocabulary, load_model, preset_path, read_image  # noqa: E402
from demo_helpers import sharp_checkpoint  # noqa: E402
from reference_weights import openai_like_state_dict  # noqa: E402
from segmentation.evaluation import (build_benchmark_dataset, build_segmentor, load_benchmark,  # noqa: E402
                                     training_free_predict, training_free_protocol)
from test_clip_backbone import write_traced_clip  # noqa: E402
from test_seg_datasets import make_voc  # noqa: E402
from utils.config import load_config  # noqa: E402

METHODS = ('maskclip', 'sclip', 'clearclip', 'naclip')
IMAGE_ID = '2007_000033'


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """A VOC-layout dataset (20x30 px images), the tiny methods' CLIP as an OpenAI-style TorchScript file, and the
    tiny model of each method with those weights."""
    tmp = tmp_path_factory.mktemp('training_free_demo')
    clip = build_tiny('sclip').clip
    clip.load_state_dict(openai_like_state_dict(clip.state_dict(), seed=3))
    weights = str(tmp / 'tiny_openai.pt')
    write_traced_clip(clip.eval(), weights)
    voc = make_voc(tmp / 'voc')
    models = {}
    for method in METHODS:
        cfg = load_config(tiny_config_path(method))
        models[method] = (cfg, load_model(cfg, weights))
    return dict(tmp=tmp, voc=voc, weights=weights, models=models,
                image=str(voc / 'JPEGImages' / f'{IMAGE_ID}.jpg'))


def main_seg_prediction(world, model, preset, opts=()):
    """The label map main_seg.py's segmentor gives the fixture image with `preset` (the mmseg pipeline)."""
    bench = load_benchmark(preset, [f"data_root={world['voc']}", *opts])
    dataset = build_benchmark_dataset(bench)
    segmentor = build_segmentor(model, dataset, bench).eval()
    index = [i for i in range(len(dataset)) if IMAGE_ID in dataset[i]['data_samples'].img_path][0]
    with torch.no_grad():
        sample = segmentor.test_step(pseudo_collate([dataset[index]]))[0]
    return sample.pred_sem_seg.data[0].numpy()


def test_demo_image_is_the_pipelines_image(world):
    """The demo reads the pixels mmseg's loader reads (so a difference below would be the rule's, not the file's)."""
    import mmcv
    assert np.array_equal(read_image(world['image']), mmcv.imread(world['image'], channel_order='rgb'))


@pytest.mark.parametrize('method', METHODS)
def test_published_preset_predicts_what_main_seg_does(world, method):
    """voc21: SCLIP/NACLIP's 56 query names for 21 classes (26 background words), SCLIP's area_thd, NACLIP's whole
    image and PAMR, ClearCLIP/MaskCLIP's 448 windows."""
    cfg, model = world['models'][method]
    segmenter = Segmenter(model, cfg, 'voc21')
    assert preset_path('voc21', method).endswith(f'training_free/{method}_voc21.py')
    vocab = segmenter.default_vocabulary()
    protocol = training_free_protocol(method, 'voc21')
    assert vocab.queries == protocol['names'] and vocab.query_idx == protocol['query_idx'] and len(vocab.names) == 21
    labels = segmenter.predict(read_image(world['image']), vocab).labels
    expected = main_seg_prediction(world, model, preset_path('voc21', method))
    assert labels.shape == (20, 30) and np.array_equal(labels, expected)
    no_threshold = ['test_cfg.training_free.prob_thd=0']  # random weights: ClearCLIP's 0.5 leaves only background
    labels = Segmenter(model, cfg, 'voc21', no_threshold).predict(read_image(world['image']), vocab).labels
    assert len(np.unique(labels)) > 1
    assert np.array_equal(labels, main_seg_prediction(world, model, preset_path('voc21', method), no_threshold))
    line = segmenter.protocol(vocab)
    assert f"'method': '{method}'" in line and f"'area_thd': {protocol['area_thd']}" in line
    assert f"'prob_thd': {protocol['prob_thd']}" in line and 'query names for 21 classes' in line


def test_area_thd_and_threshold_follow_the_rule(world):
    """SCLIP voc21 with area_thd and prob_thd raised (preset overrides) and the demo's threshold: the same as
    training_free_predict with those values on the same input."""
    cfg, model = world['models']['sclip']
    opts = ['test_cfg.training_free.area_thd=0.3']
    segmenter = Segmenter(model, cfg, 'sclip_voc21', opts)
    image = read_image(world['image'])
    vocab = segmenter.default_vocabulary()
    p = training_free_protocol('sclip', 'voc21')
    labels = segmenter.predict(image, vocab, bg_thresh=0.06).labels
    with torch.no_grad():
        expected = training_free_predict(model, segmenter.to_tensor(segmenter.resize(image)),
                                         segmenter.text_embedding(p['names']), p['query_idx'], image.shape[:2],
                                         p['slide_crop'], p['slide_stride'], p['logit_scale'], 0.06, 0.3,
                                         p['pamr_steps'], p['pamr_stride'])['pred'].numpy()
    assert np.array_equal(labels, expected)
    assert np.array_equal(segmenter.predict(image, vocab).labels,
                          main_seg_prediction(world, model, preset_path('sclip_voc21'), opts))


def test_free_names_are_one_query_per_class(world):
    cfg, model = world['models']['naclip']
    segmenter = Segmenter(model, cfg, 'naclip_voc20')
    image = read_image(world['image'])
    vocab = free_vocabulary(['dog', 'grass', 'sky'], with_bg=True)
    labels = segmenter.predict(image, vocab).labels
    p = training_free_protocol('naclip', 'voc20')
    with torch.no_grad():
        expected = training_free_predict(model, segmenter.to_tensor(segmenter.resize(image)),
                                         segmenter.text_embedding(['background', 'dog', 'grass', 'sky']),
                                         [0, 1, 2, 3], image.shape[:2], p['slide_crop'], p['slide_stride'],
                                         p['logit_scale'], p['prob_thd'], p['area_thd'], p['pamr_steps'],
                                         p['pamr_stride'])['pred'].numpy()
    assert np.array_equal(labels, expected) and labels.max() <= 3
    assert 'free (4 names, one per class)' in segmenter.protocol(vocab)


def test_demo_command_with_method_and_benchmark(world, tmp_path, capsys):
    out = tmp_path / 'out'
    demo_seg.main(['--method', 'sclip', '--cfg', tiny_config_path('sclip'), '--resume', world['weights'],
                   '--input', world['image'], '--output_dir', str(out), '--dataset', 'voc21', '--vis', 'pred'])
    printed = capsys.readouterr().out
    assert 'protocol: protocol=SCLIP' in printed and "'area_thd': 0.1" in printed and '21 classes' in printed
    labels = np.asarray(Image.open(out / 'pred' / f'{IMAGE_ID}.png'))
    _, model = world['models']['sclip']
    assert np.array_equal(labels, main_seg_prediction(world, model, preset_path('sclip_voc21')))


def test_toy_preset_of_a_training_free_model(world):
    cfg, model = world['models']['clearclip']
    segmenter = Segmenter(model, cfg, 'toy')
    assert segmenter.training_free and preset_path('toy', 'clearclip').endswith('training_free/toy.py')
    vocab = segmenter.default_vocabulary()
    assert vocab.names[0] == 'background' and vocab.queries == vocab.names
    assert segmenter.predict(np.zeros((64, 64, 3), np.uint8), vocab).labels.shape == (64, 64)


def test_bad_input_is_one_line(world, tmp_path, capsys):
    common = ['--resume', world['weights'], '--input', world['image'], '--output_dir', str(tmp_path)]
    cases = [(['--cfg', tiny_config_path('sclip'), '--dataset', 'naclip_voc21'], "naclip's protocol, but the model "
              'is sclip'),
             (['--dataset', 'voc21'], 'give the model config (--cfg CFG) or a training-free method'),
             (['--method', 'naclip', '--cfg', tiny_config_path('sclip')], '--method naclip, but')]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            demo_seg.main(common + args)
        assert str(stop.value.code).startswith('demo_seg: ') and message in str(stop.value.code)
        assert '\n' not in str(stop.value.code)
    generic_cfg, generic_ckpt = sharp_checkpoint(tmp_path)
    generic = load_model(load_config(generic_cfg), generic_ckpt)
    with pytest.raises(DemoError, match='is not a training-free method'):
        Segmenter(generic, load_config(generic_cfg), 'sclip_voc21')
    with pytest.raises(DemoError, match='unknown dataset preset'):
        preset_path('voc21')  # a benchmark name needs a training-free model


def test_app_callback_with_a_training_free_preset(world):
    cfg, model = world['models']['sclip']
    ui_app = app.App(Segmenter(model, cfg, 'sclip_voc21'))
    image = read_image(world['image'])
    vocab = ui_app.segmenter.default_vocabulary()
    names = ', '.join(vocab.prompts)  # the page's default text
    overlay, labelled, groups, found, protocol = ui_app.segment(image, names, 0.1, True)
    assert overlay.shape == image.shape and labelled.shape[0] > image.shape[0] and groups is None
    assert found and 'protocol=SCLIP' in protocol and '56 query names for 21 classes' in protocol
    assert ui_app.vocabulary(names, True) is not None and ui_app.vocabulary(names, True).queries == vocab.queries
    typed = ui_app.vocabulary('dog, cat', True)
    assert typed.queries is None and typed.names == ['background', 'dog', 'cat']
    *_, typed_protocol = ui_app.segment(image, 'dog, cat', 0.2, True)
    assert "'prob_thd': 0.2" in typed_protocol and 'free (3 names' in typed_protocol
    args = app.parse_args(['--method', 'naclip', '--resume', world['weights'], '--dataset', 'voc21'])
    cfg, ckpt, said, preset = app.choose_model(args)
    assert cfg.model.type == 'NACLIP' and ckpt == world['weights'] and 'naclip' in said and preset == 'voc'
