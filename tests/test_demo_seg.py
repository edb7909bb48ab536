"""demo/demo_seg.py and demo/inference.py: every vis mode, every preset, free vocabularies, bad inputs."""
import os
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from demo import demo_seg
from demo.inference import (ALIASES, GROUP_MAP_CROPS, DemoError, Segmenter, free_vocabulary, load_model,
                            parse_vocab, preset_names, preset_vocabulary, read_image)
from demo_helpers import sharp_checkpoint, toy_images
from utils.config import load_config

TOY = ['circle', 'square', 'triangle', 'star', 'ring', 'cross', 'heart', 'diamond']


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    folder = tmp_path_factory.mktemp('demo')
    cfg, ckpt = sharp_checkpoint(folder)
    return {'cfg': cfg, 'ckpt': ckpt, 'images': toy_images(folder / 'toy', count=3), 'dir': folder}


@pytest.fixture(scope='module')
def toy_segmenter(world):
    cfg = load_config(world['cfg'])
    return Segmenter(load_model(cfg, world['ckpt']), cfg, 'toy')


def run_demo(world, *args):
    demo_seg.main(['--cfg', world['cfg'], '--resume', world['ckpt'], *args])


def test_every_vis_mode_writes_its_pictures(world, tmp_path, capsys):
    out = tmp_path / 'out'
    image = world['images'][0]
    run_demo(world, '--input', image, '--output_dir', str(out), '--dataset', 'toy', '--vis', *demo_seg.VIS_MODES)
    assert '9 classes, background first' in capsys.readouterr().out
    h, w = read_image(image).shape[:2]
    for mode in ('input', 'pred', 'input_pred', 'first_group', 'final_group'):
        picture = Image.open(out / mode / 'val_000000.png')
        assert picture.size == (w, h), mode
    pred = np.asarray(Image.open(out / 'pred' / 'val_000000.png'))
    assert Image.open(out / 'pred' / 'val_000000.png').mode == 'P' and pred.max() <= len(TOY)
    assert np.array_equal(np.asarray(Image.open(out / 'input' / 'val_000000.png').convert('RGB')),
                          read_image(image))
    assert sorted(os.listdir(out / 'all_groups')) == ['val_000000_stage0.png', 'val_000000_stage1.png']
    for mode in ('input_pred_label', 'group_labels'):
        picture = Image.open(out / mode / 'val_000000.png')
        assert picture.width >= w and picture.height > h, mode  # upscaled for text, legend underneath
    first = np.asarray(Image.open(out / 'first_group' / 'val_000000.png'))
    final = np.asarray(Image.open(out / 'final_group' / 'val_000000.png'))
    assert not np.array_equal(first, final)


def test_predictions_follow_the_benchmark_arithmetic(world, toy_segmenter):
    """One 64 px window covers a toy image: the label map is the arg-max of zero_shot_logits on it."""
    from segmentation.evaluation import zero_shot_logits
    image = read_image(world['images'][1])
    vocab = free_vocabulary(['circle', 'square', 'star'], with_bg=True)
    pred = toy_segmenter.predict(image, vocab, bg_thresh=0.1)
    text = toy_segmenter.text_embedding(vocab.prompts)
    with torch.no_grad():
        logits = zero_shot_logits(toy_segmenter.model, toy_segmenter.to_tensor(image), text, True, 0.1)
    assert np.array_equal(pred.labels, logits[0].argmax(dim=0).numpy())
    assert len(np.unique(pred.labels)) > 1


def test_group_labels_name_every_final_group(world, toy_segmenter):
    vocab = free_vocabulary(TOY, with_bg=False)
    pred = toy_segmenter.predict(read_image(world['images'][2]), vocab)
    assert len(pred.groups) == 2 and pred.num_groups == [8, 4]
    assert set(pred.group_names) == set(np.unique(pred.groups[-1]).tolist())
    for text in pred.group_names.values():
        name, score = text.rsplit(' ', 1)
        assert name in TOY and 0 < float(score) <= 1


PRESET_FILES = sorted({ALIASES.get(name, name) for name in preset_names()})
PAMR_PRESET = 'tcl_voc20'  # TCL's PAMR refinement is slow at 448 px: run it for one preset only


@pytest.mark.parametrize('preset', PRESET_FILES)
def test_every_dataset_preset_runs(world, tmp_path, capsys, preset):
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS
    from segmentation.evaluation import load_benchmark
    from demo.inference import preset_path
    out = tmp_path / 'out'
    no_pamr = [] if preset == PAMR_PRESET else ['--seg-opts', 'test_cfg.pamr=False']
    run_demo(world, '--input', world['images'][0], '--output_dir', str(out), '--dataset', preset, '--vis', 'pred',
             *no_pamr)
    printed = capsys.readouterr().out
    bench = load_benchmark(preset_path(preset))
    init_default_scope('mmseg')
    classes = DATASETS.get(bench.dataset.type).METAINFO.get('classes') or ('background', *TOY)
    assert f'({len(classes)} classes' in printed
    assert ('background first' in printed) == (classes[0] == 'background')
    assert np.asarray(Image.open(out / 'pred' / 'val_000000.png')).max() < len(classes)


def test_aliases_name_existing_presets():
    from demo.inference import PRESET_DIR
    assert {'voc', 'context', 'coco', 'ade'} <= set(ALIASES)
    assert all(os.path.isfile(os.path.join(PRESET_DIR, f'{stem}.py')) for stem in ALIASES.values())
    assert PAMR_PRESET in PRESET_FILES and set(ALIASES) <= set(preset_names())
    with pytest.raises(DemoError, match='unknown dataset preset'):
        from demo.inference import preset_path
        preset_path('imagenet')
    with pytest.raises(SystemExit):
        demo_seg.parse_args(['--cfg', 'x', '--input', 'y', '--output_dir', 'z', '--dataset', 'nope'])


def test_free_vocabulary_from_text_and_file(world, tmp_path, capsys):
    vocab_file = tmp_path / 'names.txt'
    vocab_file.write_text('circle\nsquare\n\nstar\n')
    assert parse_vocab(str(vocab_file)) == ['circle', 'square', 'star']
    assert parse_vocab(' dog,grass , sky,') == ['dog', 'grass', 'sky']
    for args, count in ((['--vocab', str(vocab_file)], 4), (['--vocab', 'circle, square, star', '--no-bg'], 3)):
        out = tmp_path / f'out{count}'
        run_demo(world, '--input', world['images'][0], '--output_dir', str(out), '--dataset', 'toy',
                 '--vis', 'pred', 'input_pred_label', *args)
        assert f'({count} classes' in capsys.readouterr().out
        assert np.asarray(Image.open(out / 'pred' / 'val_000000.png')).max() < count


def test_bad_vocabularies_give_one_message(world, tmp_path):
    for vocab, message in (('', 'vocabulary is empty'), (' , ,', 'vocabulary is empty'),
                           ('dog, cat, dog', 'more than once')):
        with pytest.raises(SystemExit) as err:
            run_demo(world, '--input', world['images'][0], '--output_dir', str(tmp_path), '--vocab', vocab)
        assert message in str(err.value) and '\n' not in str(err.value)


def test_folder_with_a_broken_image_processes_the_others(world, tmp_path, capsys):
    folder = tmp_path / 'in'
    folder.mkdir()
    for i, path in enumerate(world['images'][:2]):
        Image.open(path).save(folder / f'good{i}.jpg')
    (folder / 'broken.jpg').write_bytes(b'not a jpeg at all')
    (folder / 'notes.txt').write_text('not an image')
    empty = tmp_path / 'empty'
    empty.mkdir()
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as err:
        run_demo(world, '--input', str(folder), str(empty), '--output_dir', str(out), '--dataset', 'toy',
                 '--vis', 'input_pred')
    assert err.value.code == 1
    errors = capsys.readouterr().err
    assert re.search(r'cannot read image .*broken\.jpg', errors)
    assert f'folder {empty} has no images' in errors
    assert sorted(os.listdir(out / 'input_pred')) == ['good0.png', 'good1.png']


def test_glob_inputs_get_unique_names(world, tmp_path):
    for sub in ('a', 'b'):
        (tmp_path / sub).mkdir()
        Image.open(world['images'][0]).save(tmp_path / sub / 'same.png')
    out = tmp_path / 'out'
    run_demo(world, '--input', str(tmp_path / '*' / 'same.png'), '--output_dir', str(out), '--dataset', 'toy',
             '--vis', 'input')
    assert sorted(os.listdir(out / 'input')) == ['a__same.png', 'b__same.png']
    with pytest.raises(SystemExit) as err:
        run_demo(world, '--input', str(tmp_path / 'nothing*.png'), '--output_dir', str(out))
    assert 'no file matches' in str(err.value)


def test_without_resume_warns_once_and_uses_random_weights(world, tmp_path, capsys):
    out = tmp_path / 'out'
    demo_seg.main(['--cfg', world['cfg'], '--input', *world['images'][:2], '--output_dir', str(out),
                   '--dataset', 'toy', '--vis', 'pred'])
    assert capsys.readouterr().err.count('RANDOM weights') == 1
    assert len(os.listdir(out / 'pred')) == 2


def test_large_inputs_are_segmented_window_by_window(world, tmp_path):
    """A 448-px preset on a 600x900 image: the encoder never sees more than one 448x448 crop at a time for the
    segmentation, and at most GROUP_MAP_CROPS crops' area for the group maps."""
    cfg = load_config(world['cfg'])
    model = load_model(cfg, world['ckpt'])
    shapes = []
    model.img_encoder.register_forward_pre_hook(lambda module, args: shapes.append(tuple(args[0].shape)))
    segmenter = Segmenter(model, cfg, 'voc')
    image = np.asarray(Image.open(world['images'][0]).convert('RGB').resize((900, 600), Image.BILINEAR))
    pred = segmenter.predict(image, free_vocabulary(TOY, with_bg=True))
    assert pred.labels.shape == (600, 900) and pred.groups[-1].shape == (600, 900)
    from segmentation.evaluation import slide_windows
    windows = slide_windows(448, 672, (448, 448), (224, 224))
    crops = [s for s in shapes if s[-2:] == (448, 448)]
    assert len(windows) == 2 and sum(s[0] for s in crops) == len(windows)
    assert all(s[0] <= segmenter.bench.test_cfg.crop_batch for s in crops)
    group_pass = [s for s in shapes if s not in crops]
    assert group_pass == [(1, 3, 448, 672)] and 448 * 672 <= GROUP_MAP_CROPS * 448 * 448

    huge = np.zeros((600, 6000, 3), dtype=np.uint8)
    shapes.clear()
    segmenter.predict(huge, free_vocabulary(TOY, with_bg=False))
    assert max(s[-1] * s[-2] for s in shapes) <= GROUP_MAP_CROPS * 448 * 448


def test_preset_vocabularies_come_from_the_segmentation_datasets():
    from segmentation.datasets import GROUPVIT_VOC_CLASSES
    from segmentation.evaluation import load_benchmark
    from demo.inference import preset_path
    vocab = preset_vocabulary(load_benchmark(preset_path('voc')))
    assert vocab.names == list(GROUPVIT_VOC_CLASSES) and vocab.with_bg and len(vocab.prompts) == 20
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        with pytest.raises(DemoError, match='cannot read image'):
            read_image(__file__)


def test_toy_preset_vocabulary_reads_the_worlds_class_list(world):
    """The toy preset names its classes from <world>/classes.json (a (classes, palette) file): names only."""
    from segmentation.evaluation import load_benchmark
    from demo.inference import preset_path
    bench = load_benchmark(preset_path('toy'), [f"data_root={world['dir'] / 'toy' / 'voc'}"])
    vocab = preset_vocabulary(bench)
    assert vocab.names == ['background', *TOY] and vocab.with_bg and vocab.prompts == TOY
