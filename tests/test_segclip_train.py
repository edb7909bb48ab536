"""SegCLIP end to end on a small toy world: trains through main_pg_seg.py with superpixel labels from the data
pipeline (configs/toy/segclip_tiny.yml), is evaluated by main_seg.py and segments an image through the demo."""
import json
import os

import numpy as np
import pytest
from omegaconf import OmegaConf

import main_pg_seg
import main_seg
import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from tools.make_toy_data import make_toy_world
from utils.checkpoint import find_latest_checkpoint, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHANGES = """\
_base_: {repo}/configs/toy/segclip_tiny.yml
data:
  batch_size: 8
  dataset:
    meta:
      toy_train: {{length: 16}}
      toy_val: {{length: 8}}
train:
  epochs: 1
  warmup_epochs: 0
evaluate:
  seg:
    cfg: segmentation/configs/_base_/datasets/toy.py
    opts: ['data_root={world}/voc']
print_freq: 1
"""


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('segclip')
    world = tmp / 'toy'
    make_toy_world(str(world), train_samples=16, samples_per_shard=16, cls_samples=8, seg_val=2, seg_tune=1)
    path = tmp / 'segclip_toy.yml'
    path.write_text(CHANGES.format(repo=REPO, world=world))
    return dict(tmp=tmp, world=world, cfg=str(path))


def test_trains_on_the_toy_world_through_main_pg_seg(run):
    out = run['tmp'] / 'train'
    main_pg_seg.main([run['cfg'], '--output', str(out), '--opts', f"data.root={run['world']}"])
    (folder,) = [root for root, dirs, files in os.walk(out) if 'log.txt' in files]
    checkpoint = find_latest_checkpoint(folder)
    weights = load_checkpoint(checkpoint)['model']
    assert 'clip.visual.transformer.semantic_layer2.semantic_center' in weights and 'vis_mae_decoder.mask_token' in weights
    metrics = [json.loads(line) for line in open(os.path.join(folder, 'metrics.jsonl'))]
    epoch = next(m for m in metrics if 'epoch/loss_kl' in m)
    # the trained total is the published one: contrastive + KL + MAE, each once
    total = epoch['epoch/loss'] + epoch['epoch/loss_kl'] + epoch['epoch/loss_mae']
    assert abs(epoch['epoch/total_loss'] - total) < 1e-5
    assert epoch['epoch/loss_kl'] > 0 and epoch['epoch/loss_mae'] > 0
    log = open(os.path.join(folder, 'log.txt')).read()
    assert 'SegCLIP' in log and 'zero-shot toy_val' in log
    assert float(weights['clip.logit_scale']) <= np.log(100) + 1e-6
    run['checkpoint'] = checkpoint


def test_evaluates_through_main_seg(run, capsys):
    out = run['tmp'] / 'seg'
    main_seg.main([run['cfg'], '--resume', run['checkpoint'], '--output', str(out),
                   '--opts', f"data.root={run['world']}"])
    (report,) = [p for p in os.listdir(out) if p.endswith('.json')]
    result = json.load(open(out / report))
    assert 0 <= result['mIoU'] <= 100 and set(result['per_class']) >= {'background'}
    assert 'mIoU' in capsys.readouterr().out


def test_segments_an_image_through_the_demo(run):
    from demo.inference import Segmenter, free_vocabulary, load_model
    from utils.config import load_config
    cfg = load_config(run['cfg'])
    model = load_model(cfg, run['checkpoint'])
    segmenter = Segmenter(model, cfg, 'toy', seg_opts=[f"data_root={run['world']}/voc"])
    image = (np.random.default_rng(0).random((40, 72, 3)) * 255).astype(np.uint8)
    pred = segmenter.predict(image, free_vocabulary(['circle', 'star', 'ring'], with_bg=True), bg_thresh=0.1)
    assert pred.labels.shape == (40, 72) and pred.labels.max() <= 3
    assert len(pred.groups) == 1 and pred.groups[0].shape == (40, 72) and pred.num_groups == [8]
    assert pred.group_names


def test_the_published_preset_segments_with_segclip_settings(run):
    from demo.inference import Segmenter, load_model, preset_vocabulary
    from utils.config import load_config
    cfg = load_config(run['cfg'])
    segmenter = Segmenter(load_model(cfg, run['checkpoint']), cfg, 'segclip_voc')
    assert segmenter.default_bg_thresh == 0.8
    assert segmenter.bench.test_cfg.crop_size == (224, 224) and segmenter.bench.test_cfg.template == 'simple'
    assert preset_vocabulary(segmenter.bench).names[12] == 'dog'
    assert OmegaConf.to_container(cfg.model)['type'] == 'SegCLIP'
