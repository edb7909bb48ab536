"""The toy pipeline of TCL, through the project's entry points: a tiny CLIP trained from scratch (ContrastiveCLIP,
configs/toy/clip_tiny.yml) by main_pg_seg.py, TCL started from it (configs/toy/tcl_tiny.yml: step schedule, UST
phase, frozen CLIP, selection on the tune split), main_seg.py with a TCL preset on the toy world, the demo and the
web app's callback."""
import json
import os

import numpy as np
import pytest
import torch

import main_pg_seg
import main_seg
import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from tools.make_toy_data import make_toy_world
from utils.checkpoint import load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_CLIP = ['model.clip_model.vision_layers=2', 'model.clip_model.vision_width=64', 'model.clip_model.embed_dim=32',
             'model.clip_model.transformer_layers=1', 'model.clip_model.vision_patch_size=16']


def run_folder(root):
    (folder,) = [r for r, _, files in os.walk(root) if 'log.txt' in files]
    return folder


def metrics(folder):
    return [json.loads(line) for line in open(os.path.join(folder, 'metrics.jsonl'))]


@pytest.fixture(scope='module')
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('tcl_toy')
    world = tmp / 'toy'
    make_toy_world(str(world), train_samples=16, samples_per_shard=16, cls_samples=8, seg_val=1, seg_tune=1)
    return {'tmp': tmp, 'world': str(world)}


@pytest.fixture(scope='module')
def clip_run(toy):
    main_pg_seg.main([os.path.join(REPO, 'configs/toy/clip_tiny.yml'), '--output', str(toy['tmp'] / 'clip'),
                      '--opts', f"data.root={toy['world']}", 'data.batch_size=8',
                      'data.dataset.meta.toy_train.length=16', 'data.dataset.meta.toy_val.length=8', 'train.epochs=1',
                      'train.warmup_epochs=0', *TINY_CLIP])
    folder = run_folder(toy['tmp'] / 'clip')
    return {'folder': folder, 'checkpoint': os.path.join(folder, 'ckpt_best_acc1')}


@pytest.fixture(scope='module')
def tcl_run(toy, clip_run):
    main_pg_seg.main([os.path.join(REPO, 'configs/toy/tcl_tiny.yml'), '--output', str(toy['tmp'] / 'tcl'),
                      '--opts', f"data.root={toy['world']}", 'data.batch_size=4',
                      f"model.clip_model={clip_run['checkpoint']}",
                      'model.ie_freeze=1', 'model.ust_steps=2', 'train.epochs=2', 'train.epoch_steps=2',
                      'train.warmup_epochs=1'])
    folder = run_folder(toy['tmp'] / 'tcl')
    return {'folder': folder, 'cfg': os.path.join(folder, 'config.yaml')}


def test_clip_trains_from_scratch_into_a_clip_file(clip_run):
    from models.clip import build_clip
    weights = load_checkpoint(clip_run['checkpoint'])['model']
    assert weights and all(k.startswith('clip.') for k in weights)
    clip = build_clip(clip_run['checkpoint'])
    assert all(torch.equal(v, weights['clip.' + k]) for k, v in clip.state_dict().items())
    rows = metrics(clip_run['folder'])
    assert any('train/loss' in r for r in rows) and any('val/acc1_subset' in r for r in rows)


def test_tcl_trains_on_the_toy_clip_with_its_phases(clip_run, tcl_run):
    clip = load_checkpoint(clip_run['checkpoint'])['model']
    after_ust = load_checkpoint(os.path.join(tcl_run['folder'], 'ckpt_epoch_0'))
    after_all = load_checkpoint(os.path.join(tcl_run['folder'], 'ckpt_epoch_1'))
    assert after_ust['step'] == 2 and after_all['step'] == 4
    for key in ('visual.conv1.weight', 'visual.transformer.resblocks.1.attn.in_proj_weight', 'ln_final.weight'):
        mine = ('clip_image_encoder.clip_' + key) if key.startswith('visual.') else 'clip_text_encoder.' + key
        assert torch.equal(after_all['model'][mine], clip['clip.' + key]), key  # frozen CLIP
    copy = 'masker.image_encoder.backbone.transformer.resblocks.1.attn.in_proj_weight'
    assert torch.equal(after_ust['model'][copy], clip['clip.visual.transformer.resblocks.1.attn.in_proj_weight'])
    assert not torch.equal(after_all['model'][copy], after_ust['model'][copy])  # trains after the UST phase
    gate = 'masker.image_encoder.decoder.decoder.net.0.conv.gate.gate'
    assert after_ust['model'][gate] != 0  # the decoder trains from the first step
    rows = metrics(tcl_run['folder'])
    terms = {'area_loss', 'neg_area_loss', 'tclf_loss', 'tv_img_loss', 'tv_mask_loss', 'tcli_loss'}
    assert terms <= {k[len('train/'):] for r in rows for k in r}
    assert sum('val/miou' in r for r in rows) == 2
    assert after_all['metrics']['best']['miou']['split'].endswith('[tune]')
    log = open(os.path.join(tcl_run['folder'], 'log.txt')).read()
    assert 'an epoch is train.epoch_steps = 2 optimizer steps' in log


def test_main_seg_with_a_tcl_preset_on_the_toy_world(toy, tcl_run, capsys):
    out = toy['tmp'] / 'seg'
    main_seg.main([tcl_run['cfg'], '--resume', os.path.join(tcl_run['folder'], 'ckpt_epoch_1'), '--output', str(out),
                   '--opts', 'evaluate.seg.cfg', 'segmentation/configs/_base_/datasets/tcl_voc.py', 'evaluate.seg.opts',
                   f"[data_root={toy['world']}/voc,dataset.type=ToySegDataset]"])
    report = json.load(open(out / 'seg_tcl_voc.json'))
    assert 0 <= report['mIoU'] <= 100 and set(report['per_class']) == {'background', 'circle', 'square', 'triangle',
                                                                          'star', 'ring', 'cross', 'heart', 'diamond'}
    protocol = report['protocol']
    assert protocol['protocol'] == 'TCL' and protocol['template'] == 'custom' and protocol['pamr'] is True
    assert 'mIoU' in capsys.readouterr().out


def test_demo_and_app_segment_with_tcl(toy, tcl_run, tmp_path, capsys):
    from demo import app, demo_seg
    from demo.inference import Segmenter, load_model
    from utils.config import load_config
    ckpt = os.path.join(tcl_run['folder'], 'ckpt_epoch_1')
    image = os.path.join(toy['world'], 'voc', 'JPEGImages', 'val_000000.jpg')
    demo_seg.main(['--cfg', tcl_run['cfg'], '--resume', ckpt, '--input', image, '--output_dir', str(tmp_path),
                   '--dataset', 'toy', '--vis', 'pred', 'input_pred_label', 'group_labels'])
    captured = capsys.readouterr()
    assert '9 classes, background first' in captured.out and 'TCL has no groups' in captured.err
    assert (tmp_path / 'pred' / 'val_000000.png').is_file() and not (tmp_path / 'group_labels').exists()
    cfg = load_config(tcl_run['cfg'])
    ui_app = app.App(Segmenter(load_model(cfg, ckpt), cfg, 'toy'))
    picture = np.asarray(__import__('PIL.Image', fromlist=['Image']).open(image).convert('RGB'))
    overlay, labelled, groups, found, protocol = ui_app.segment(picture, 'circle, square, star', 0.4, True)
    assert overlay.shape == picture.shape and labelled.shape[0] > picture.shape[0] and groups is None
    assert found.strip()
