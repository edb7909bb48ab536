"""A method defined only here — a registered class with the contract of models/base.py, no edit anywhere else —
trains one step through main_pg_seg.py, is evaluated by main_seg.py's segmentor and segments an image through the
demo's inference code: the proof that a method is one folder."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from omegaconf import OmegaConf

import main_pg_seg
import main_seg
import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from models import MODELS, SegmentationMethod
from tools.make_toy_data import make_toy_world
from utils.checkpoint import find_latest_checkpoint, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORWARD_KWARGS = []
SEGMENT_OPTIONS = []


@MODELS.register_module()
class PixelPrototypeMethod(SegmentationMethod):
    """Per-pixel colour embeddings and bag-of-words captions; a pixel takes the class its embedding is closest to."""
    patch_size = 8

    def __init__(self, width=16, vocab_size=49408, context=16):
        super().__init__()
        self.context = context
        self.pixel = nn.Conv2d(3, width, kernel_size=1)
        self.words = nn.EmbeddingBag(vocab_size, width, mode='mean', padding_idx=0)
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    @property
    def context_length(self):
        return self.context

    def dense(self, image):
        """image: [B, 3, H, W] -> unit pixel embeddings [B, C, H, W]"""
        return F.normalize(self.pixel(image), dim=1)

    def encode_image(self, image):
        return self.dense(image).mean(dim=(2, 3))

    def encode_text(self, text):
        return self.words(text)

    def forward_train(self, image, text, **inputs):
        FORWARD_KWARGS.append(sorted(inputs))
        image_x = F.normalize(self.encode_image(image), dim=-1)
        text_x = F.normalize(self.encode_text(text), dim=-1)
        logits = image_x @ text_x.t() * self.logit_scale.exp()
        labels = torch.arange(len(image), device=image.device)
        return {'loss': F.cross_entropy(logits, labels),
                'match_accuracy': (logits.argmax(1) == labels).float().mean() * 1000}

    def zero_shot_logits(self, img, text_embedding, with_bg, bg_thresh, top_k=None):
        SEGMENT_OPTIONS.append(top_k)
        scores = torch.einsum('bchw,nc->bnhw', self.dense(img), text_embedding)
        if not with_bg:
            return scores
        return torch.cat([torch.full_like(scores[:, :1], bg_thresh), scores], dim=1)


CHANGES = """\
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
  task: [cls]
  seg:
    cfg: segmentation/configs/_base_/datasets/toy.py
    opts: ['data_root={world}/voc', 'test_cfg.top_k=2']
"""


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('contract')
    world = tmp / 'toy'
    make_toy_world(str(world), train_samples=16, samples_per_shard=16, cls_samples=8, seg_val=3, seg_tune=1)
    # the toy recipe's data and training keys, with this method as the model
    cfg = OmegaConf.merge(OmegaConf.load(os.path.join(REPO, 'configs/toy/groupvit_tiny.yml')),
                          OmegaConf.create(CHANGES.format(world=world)))
    cfg._base_ = os.path.join(REPO, 'configs/default.yml')
    cfg.model = {'type': 'PixelPrototypeMethod', 'context': int(cfg.data.text_aug.max_seq_len)}
    path = tmp / 'pixel_prototypes.yml'
    OmegaConf.save(cfg, path)
    return dict(tmp=tmp, world=world, cfg=str(path))


def test_trains_one_epoch_through_main_pg_seg(run):
    out = run['tmp'] / 'train'
    FORWARD_KWARGS.clear()
    main_pg_seg.main([run['cfg'], '--output', str(out), '--opts', f"data.root={run['world']}"])
    assert FORWARD_KWARGS == [[]] * 2  # 16 samples / batch 8; only image and text are in the toy batches
    (folder,) = [os.path.join(root) for root, dirs, files in os.walk(out) if 'log.txt' in files]
    checkpoint = find_latest_checkpoint(folder)
    assert checkpoint and 'pixel.weight' in load_checkpoint(checkpoint)['model']
    log = open(os.path.join(folder, 'log.txt')).read()
    assert 'match_accuracy' in log and 'PixelPrototypeMethod' in log
    metrics = [json.loads(line) for line in open(os.path.join(folder, 'metrics.jsonl'))]
    epoch = next(m for m in metrics if any(k.startswith('epoch/') for k in m))
    # the logged-only term is not part of the trained total
    assert abs(epoch['epoch/total_loss'] - epoch['epoch/loss']) < 1e-6
    run['checkpoint'] = checkpoint


def test_evaluates_through_main_seg(run, capsys):
    out = run['tmp'] / 'seg'
    SEGMENT_OPTIONS.clear()
    main_seg.main([run['cfg'], '--resume', run['checkpoint'], '--output', str(out)])
    assert SEGMENT_OPTIONS and set(SEGMENT_OPTIONS) == {2}  # the protocol's entries the method names reach it
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
    image = (np.random.default_rng(0).random((40, 56, 3)) * 255).astype(np.uint8)
    pred = segmenter.predict(image, free_vocabulary(['red', 'green', 'blue'], with_bg=True), bg_thresh=0.1)
    assert pred.labels.shape == (40, 56) and pred.labels.max() <= 3
    assert pred.groups == []  # no groups: the method has no group_view
