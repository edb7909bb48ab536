"""utils/optim, scheduler, precision, engine (non-finite handling), zero_shot (class embeddings, accuracy),
logging/plots, resume."""
import io
import math
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from omegaconf import OmegaConf
from PIL import Image

from conftest import published_state_dict
from datasets import get_templates
from datasets.shards import ValStream
from models import SegmentationMethod, build_model
from utils.checkpoint import load_checkpoint, save_checkpoint
from utils.config import load_config
from utils.engine import NonFiniteLossError, Trainer, train_one_epoch
from utils.logging import MetricWriter
from utils.optim import build_optimizer, param_groups
from utils.plots import plot_loss_curves
from utils.precision import Precision
from utils.resume import Checkpointer, TrainState, epoch_checkpoint_path, newest_loadable, prune
from utils.scheduler import build_scheduler, scale_lr
from utils.zero_shot import ClassPrompts, class_embeddings, evaluate_cls

ROOT = Path(__file__).resolve().parents[1]

TRAIN = {'base_lr': 1e-3, 'warmup_lr': 1e-5, 'min_lr': 1e-4, 'weight_decay': 0.05, 'lr_scaling_batch': 4096,
         'accumulation_steps': 0, 'epochs': 4, 'warmup_epochs': 1, 'clip_grad': 5.0,
         'lr_scheduler': {'name': 'cosine'}, 'optimizer': {'name': 'adamw', 'eps': 1e-8, 'betas': [0.9, 0.999]}}


def tiny_model(context_length=8, vocab_size=100):
    cfg = {'type': 'MultiLabelContrastive', 'output_dim': 16, 'proj_num_layers': 2,
           'img_encoder': {'type': 'GroupViT', 'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'depths': [1, 1],
                           'num_heads': [2, 2], 'embed_factors': [1, 1], 'num_group_tokens': [4, 0],
                           'num_output_groups': [2]},
           'text_encoder': {'type': 'TextTransformer', 'context_length': context_length, 'width': 16, 'layers': 1,
                            'vocab_size': vocab_size}}
    return build_model(OmegaConf.create(cfg))


PUBLISHED_RECIPES = [
    ('group_vit_gcc_yfcc_30e.yml', 'official_state_dict_groupvit_gcc_yfcc_30e.json', set()),
    ('group_vit_gcc_redcap_30e.yml', 'official_state_dict_groupvit_gcc_yfcc_30e.json', {'multi_label_logit_scale'}),
    ('pgseg_specific.yml', 'official_state_dict_pgseg_specific.json', set()),
]


def groups_by_name(model, optimizer):
    """{parameter name: weight decay of the optimizer group holding it}; fails if a parameter is in two groups."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    decay_of = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            assert name_of[id(p)] not in decay_of, name_of[id(p)]
            decay_of[name_of[id(p)]] = group['weight_decay']
    return decay_of


@pytest.mark.parametrize('cfg_file,ref_file,absent', PUBLISHED_RECIPES)
def test_published_weight_decay_split_on_the_full_size_models(cfg_file, ref_file, absent):
    """The published set_weight_decay(model, {}, {}): no decay exactly for len(shape) == 1 or a name ending in
    '.bias'. The shapes come from the published state dicts (tests/data), not from this project's model."""
    cfg = load_config(str(ROOT / 'configs' / cfg_file))
    model = build_model(cfg.model)
    published = published_state_dict(ref_file.replace('official_state_dict_', '').replace('.json', ''))['keys']
    published = {name: shape for name, shape in published.items() if name not in absent}
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert set(trainable) <= set(published)
    expected = {name: 0.0 if len(published[name]) == 1 or name.endswith('.bias') else cfg.train.weight_decay
                for name in trainable}
    optimizer = build_optimizer(cfg.train, model, lr=1e-3)
    assert groups_by_name(model, optimizer) == expected
    decayed = {name for name, wd in expected.items() if wd > 0}
    scalars = {'logit_scale', 'multi_label_logit_scale', 'img_encoder.logit_scale'} & set(trainable)
    assert scalars and scalars <= decayed
    assert {'img_encoder.pos_embed', 'img_encoder.layers.0.group_token', 'img_encoder.layers.1.group_token',
            'text_encoder.positional_embedding'} <= decayed
    assert {'img_encoder.norm.weight', 'img_encoder.layers.0.blocks.0.attn.qkv.bias'} <= set(expected) - decayed


def test_opt_in_weight_decay_exemptions_and_frozen_parameters():
    model = tiny_model()
    model.img_encoder.patch_embed.proj.weight.requires_grad = False
    published = groups_by_name(model, build_optimizer(OmegaConf.create(TRAIN), model, lr=0.5))
    assert 'img_encoder.patch_embed.proj.weight' not in published
    assert published['logit_scale'] == published['img_encoder.pos_embed'] == 0.05
    assert published['img_encoder.layers.0.group_token'] == 0.05 and published['img_encoder.norm.weight'] == 0.0
    widened = OmegaConf.create(TRAIN)
    widened.optimizer.no_decay_keywords = ['pos_embed', 'group_token']
    keywords = groups_by_name(model, build_optimizer(widened, model, lr=0.5))
    assert keywords['img_encoder.pos_embed'] == keywords['img_encoder.layers.0.group_token'] == 0.0
    assert keywords['logit_scale'] == 0.05
    widened.optimizer.no_decay_scalars = True
    both = groups_by_name(model, build_optimizer(widened, model, lr=0.5))
    assert both['logit_scale'] == 0.0
    changed = {name for name in published if published[name] != both[name]}
    assert changed == {'logit_scale', 'img_encoder.pos_embed', 'img_encoder.layers.0.group_token'}
    decay, no_decay = param_groups(model, 0.05)
    assert decay['weight_decay'] == 0.05 and no_decay['weight_decay'] == 0.0
    assert {n for n, wd in published.items() if wd > 0} == set(decay['names'])


def test_toy_recipes_opt_into_the_exemptions_they_were_measured_with():
    for name in ('groupvit_tiny', 'pgseg_tiny', 'quickstart'):
        optimizer_cfg = load_config(str(ROOT / 'configs' / 'toy' / f'{name}.yml')).train.optimizer
        assert list(optimizer_cfg.no_decay_keywords) == ['pos_embed', 'group_token', 'logit_scale']
        assert optimizer_cfg.no_decay_scalars is True


def test_lr_scaling_by_global_batch():
    train = OmegaConf.create(TRAIN)
    published = scale_lr(train, 256, 16)  # GroupViT: 256 per GPU x 16 GPUs = 4096
    assert published.global_batch == 4096 and published.base_lr == pytest.approx(1e-3)
    half = scale_lr(train, 256, 8)
    assert half.global_batch == 2048 and half.base_lr == pytest.approx(5e-4) and half.min_lr == pytest.approx(5e-5)
    train.accumulation_steps = 2
    assert scale_lr(train, 256, 8).global_batch == 4096 and scale_lr(train, 256, 8).factor == pytest.approx(1.0)
    train.lr_scaling_batch = None  # PGSeg: no batch scaling
    unscaled = scale_lr(train, 1024, 4)
    assert unscaled.factor == 2.0 and unscaled.base_lr == 2e-3 and 'effective global batch 8192' in unscaled.describe()


@pytest.mark.parametrize('accumulation_steps', [0, 1, 2, 4])
def test_published_learning_rates_under_accumulation(accumulation_steps):
    """main_group_vit.py / main_pg_seg.py: lr (x batch x GPUs / 4096 for GroupViT only), then x accumulation_steps
    when it is above 1; the schedule starts at the warm-up rate and ends at the minimum rate."""
    by_accumulation = accumulation_steps if accumulation_steps > 1 else 1
    pgseg = load_config(str(ROOT / 'configs' / 'pgseg_specific.yml')).train
    pgseg.accumulation_steps = accumulation_steps
    lrs = scale_lr(pgseg, 1024, 8)
    assert (lrs.base_lr, lrs.warmup_lr, lrs.min_lr) == (1e-4 * by_accumulation, 1e-6 * by_accumulation,
                                                         1e-5 * by_accumulation)
    assert lrs.global_batch == 1024 * 8 * max(accumulation_steps, 1)
    groupvit = load_config(str(ROOT / 'configs' / 'group_vit_gcc_yfcc_30e.yml')).train
    groupvit.accumulation_steps = accumulation_steps
    lrs = scale_lr(groupvit, 256, 8)
    assert lrs.base_lr == 1.6e-3 * 256 * 8 / 4096.0 * by_accumulation
    assert lrs.min_lr == 4e-5 * 256 * 8 / 4096.0 * by_accumulation
    pgseg.epochs, pgseg.warmup_epochs = 2, 1
    lrs = scale_lr(pgseg, 1024, 8)
    optimizer = torch.optim.AdamW([nn.Parameter(torch.zeros(2))])
    scheduler = build_scheduler(pgseg, optimizer, lrs, updates_per_epoch=5)
    assert optimizer.param_groups[0]['lr'] == 1e-6 * by_accumulation
    scheduler.step_update(10)
    assert optimizer.param_groups[0]['lr'] == pytest.approx(1e-5 * by_accumulation)
    pgseg.lr_scale_by_accumulation = False
    assert scale_lr(pgseg, 1024, 8).base_lr == 1e-4


def test_cosine_schedule_with_linear_warmup_per_step():
    train = OmegaConf.create(TRAIN)
    lrs = scale_lr(train, 4096, 1)
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(2))], lr=123.0)
    sched = build_scheduler(train, opt, lrs, updates_per_epoch=10)
    lr_at = []
    for step in range(41):
        sched.step_update(step)
        lr_at.append(opt.param_groups[0]['lr'])
    assert lr_at[0] == pytest.approx(1e-5)
    assert lr_at[5] == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # halfway through the 10 warm-up steps
    assert all(b > a for a, b in zip(lr_at[:10], lr_at[1:10]))
    assert all(b <= a for a, b in zip(lr_at[10:], lr_at[11:]))
    assert lr_at[40] == pytest.approx(1e-4)
    mid = 1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + math.cos(math.pi * 20 / 40))
    assert lr_at[20] == pytest.approx(mid)


def test_precision_levels():
    assert Precision('O0', 'cpu').scaler is None and Precision('O0', 'cpu').dtype is None
    o1, o2 = Precision('O1', 'cpu'), Precision('O2', 'cpu')
    assert o1.dtype == torch.float16 and o1.scaler is not None and 'GradScaler' in o1.describe()
    assert o2.dtype == torch.bfloat16 and o2.scaler is None
    with o2.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match='amp_opt_level'):
        Precision('O3', 'cpu')


class Scripted(SegmentationMethod):
    """loss = w^2 * scale, where scale comes from the batch's text (NaN/inf to inject non-finite losses);
    a buffer accumulates the scales during the forward, like PGSeg's prototype momentum buffers."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.ones(1))
        self.register_buffer('seen', torch.zeros(1))
        self.hook_calls = []

    def begin_step(self, step):
        self.hook_calls.append(('begin', step))

    def end_step(self, step):
        self.hook_calls.append(('end', step))

    def forward_train(self, image, text):
        self.hook_calls.append(('forward', None))
        self.seen += text[0]
        return {'loss': (self.w ** 2).sum() * text[0]}


def scripted_trainer(output, scales, patience=3, accumulation=1):
    cfg = OmegaConf.create({'train': {**TRAIN, 'epochs': 1, 'start_epoch': 0}, 'print_freq': 1,
                            'data': {'batch_size': 2}, 'output': str(output)})
    model = Scripted()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = build_scheduler(cfg.train, opt, scale_lr(cfg.train, 4096, 1), len(scales))
    batches = iter([{'image': torch.zeros(2, 1), 'text': torch.tensor([s, s])} for s in scales])
    precision = Precision('O0', 'cpu')
    checkpointer = Checkpointer(cfg, model, opt, sched, precision)
    checkpointer.state.epoch = 1
    return Trainer(cfg, model, model, opt, sched, precision, batches, len(scales), accumulation, torch.device('cpu'),
                   MetricWriter('unused', rank=1), checkpointer.state, patience, checkpointer)


def test_nonfinite_loss_skips_the_step_and_recovers(tmp_path):
    trainer = scripted_trainer(tmp_path, [1.0, float('nan'), 1.0, float('inf'), 1.0])
    weights = []
    original_step = trainer.optimizer.step

    def step_and_record(*a, **k):
        out = original_step(*a, **k)
        weights.append(trainer.model.w.item())
        return out
    trainer.optimizer.step = step_and_record
    averages = train_one_epoch(trainer, 0)
    assert len(weights) == 3  # only the three finite steps moved the weights
    assert trainer.model.seen.item() == 3.0  # buffers changed by the non-finite forwards were put back
    assert trainer.state.step == 5 and trainer.state.nonfinite_total == 2 and trainer.state.nonfinite_in_a_row == 0
    assert os.listdir(tmp_path) == [] and math.isfinite(averages['loss'])


def test_consecutive_nonfinite_losses_stop_with_a_saved_checkpoint(tmp_path, caplog):
    trainer = scripted_trainer(tmp_path, [1.0] + [float('nan')] * 5, patience=3)
    saved = str(tmp_path / 'ckpt_nonfinite_step_4')
    with pytest.raises(NonFiniteLossError, match=f'3 optimizer steps in a row .* saved to {saved}. Lower'):
        train_one_epoch(trainer, 1)
    state = load_checkpoint(saved)
    assert (state['epoch'], state['step']) == (0, 4) and trainer.state.step == 4
    assert torch.equal(state['model']['w'], trainer.model.w.detach())
    assert 'non-finite loss at step 2' in caplog.text and 'non-finite loss at step 4' in caplog.text
    assert math.isfinite(trainer.model.w.item())


def test_step_hooks_wrap_each_optimizer_step(tmp_path):
    trainer = scripted_trainer(tmp_path, [1.0, 1.0, float('nan'), 1.0, 1.0], accumulation=2)
    train_one_epoch(trainer, 0)
    # steps of 2, 2 and 1 micro-batches; the second had a NaN loss, so no update and no end_step
    assert trainer.model.hook_calls == [('begin', 0), ('forward', None), ('forward', None), ('end', 0),
                                        ('begin', 1), ('forward', None), ('forward', None),
                                        ('begin', 2), ('forward', None), ('end', 2)]


def test_accumulation_steps_once_per_window(tmp_path):
    trainer = scripted_trainer(tmp_path, [1.0] * 6, accumulation=3)
    calls = []
    original_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: calls.append(1) or original_step(*a, **k)
    train_one_epoch(trainer, 0)
    assert len(calls) == 2 and trainer.state.step == 2


class Oracle(nn.Module):
    """encode_image reads the class c from pixel (0, 0) and answers f_c[j] = 0.5 ** ((j - c) mod n), so classes
    rank c, c+1, c+2, ...; build_text_embedding returns the rows of the identity in a chosen order."""

    def __init__(self, num_classes, order):
        super().__init__()
        self.n = num_classes
        self.order = order
        self.dummy = nn.Parameter(torch.zeros(1))

    def encode_image(self, image):
        cls = (image[:, 0, 0, 0] * 255 / 20).round().long()
        return sum(0.5 ** i * nn.functional.one_hot((cls + i) % self.n, self.n).float() for i in range(self.n))

    def tokenize(self, texts):
        return torch.zeros(len(texts), 1, dtype=torch.long)

    def build_text_embedding(self, tokens):
        assert tokens.shape == (self.n, 1, 1)
        return torch.eye(self.n)[self.order]


def class_shard(path, labels):
    with tarfile.open(path, 'w') as tar:
        for i, label in enumerate(labels):
            buf = io.BytesIO()
            Image.new('RGB', (8, 8), (20 * label,) * 3).save(buf, format='PNG')
            for ext, data in (('png', buf.getvalue()), ('cls', str(label).encode())):
                info = tarfile.TarInfo(f'{i:05d}.{ext}')
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize('order,top1,top5', [
    ('identity', 100.0, 100.0),
    ('shift', 0.0, 100.0),  # every image ranks its true class second
    ('swap01', None, None),  # top-1 right for classes 2..7 only; class 1 images rank class 1 last (top-5 miss)
])
def test_zero_shot_accuracy_of_a_model_with_known_answers(tmp_path, order, top1, top5):
    n = 8
    labels = list(np.random.default_rng(0).integers(0, n, 53))
    class_shard(tmp_path / 'val-0.tar', labels[:30])
    class_shard(tmp_path / 'val-1.tar', labels[30:])
    perm = {'identity': list(range(n)), 'shift': [(c + 1) % n for c in range(n)],
            'swap01': [1, 0] + list(range(2, n))}[order]
    to_tensor = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    stream = ValStream({str(tmp_path / f'val-{i}.tar'): 'val' for i in range(2)}, 4, to_tensor, 0, 1)
    prompts = ClassPrompts([f'class {c}' for c in range(n)], {'simple': ['a photo of a {}.']})
    out = evaluate_cls(Oracle(n, perm), stream, prompts, torch.device('cpu'), Precision('O0', 'cpu'))
    share = lambda keep: 100.0 * sum(keep(label) for label in labels) / len(labels)
    expected_top1 = top1 if top1 is not None else share(lambda label: label >= 2)
    expected_top5 = top5 if top5 is not None else share(lambda label: label != 1)
    assert out['simple']['count'] == 53 and 0 < share(lambda label: label == 1) < 100
    assert out['simple']['acc1'] == pytest.approx(expected_top1)
    assert out['simple']['acc5'] == pytest.approx(expected_top5)


def test_zero_shot_rejects_labels_outside_the_class_list(tmp_path):
    class_shard(tmp_path / 'v.tar', [0, 9])
    to_tensor = lambda img: torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)
    stream = ValStream({str(tmp_path / 'v.tar'): 'val'}, 4, to_tensor, 0, 1)
    with pytest.raises(ValueError, match='class label 9 outside the 8 class names'):
        evaluate_cls(Oracle(8, list(range(8))), stream, ClassPrompts([str(c) for c in range(8)], {'simple': ['{}']}),
                     torch.device('cpu'), Precision('O0', 'cpu'))


def test_metric_writer_tensorboard_history_and_plot(tmp_path):
    writer = MetricWriter(str(tmp_path), rank=0)
    for step in range(5):
        writer.scalars({'train/loss': 5.0 - step, 'train/loss_pg': 1.0, 'train/lr': 0.1}, step)
    writer.close()
    assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path / 'tensorboard'))
    again = MetricWriter(str(tmp_path), rank=0)  # a restarted run reads the earlier scalars back
    again.scalars({'train/loss': 0.5}, 5)
    again.close()
    assert again.history['train/loss'] == {0: 5.0, 1: 4.0, 2: 3.0, 3: 2.0, 4: 1.0, 5: 0.5}
    png = plot_loss_curves(again.history, str(tmp_path / 'loss_curves.png'))
    assert png and Image.open(png).size[0] > 100
    assert plot_loss_curves({'train/lr': {0: 1.0}}, str(tmp_path / 'none.png')) is None


def test_newest_loadable_checkpoint_skips_a_corrupt_one(tmp_path, caplog):
    model = nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    for epoch in range(3):
        save_checkpoint(epoch_checkpoint_path(str(tmp_path), epoch), model.state_dict(), opt.state_dict(),
                        extra={'epoch': epoch, 'step': 10 * (epoch + 1)})
    state_file = tmp_path / 'ckpt_epoch_2' / 'state.pt'
    data = state_file.read_bytes()
    state_file.write_bytes(data[:200] + b'\0' * 64 + data[264:])
    path, state = newest_loadable(str(tmp_path))
    assert path == str(tmp_path / 'ckpt_epoch_1') and state['step'] == 20
    assert 'ckpt_epoch_2 is unreadable' in caplog.text
    prune(str(tmp_path), 1)
    assert sorted(os.listdir(tmp_path)) == ['ckpt_epoch_2']


def test_wandb_requested_but_missing_falls_back_to_tensorboard(tmp_path, monkeypatch, caplog):
    import builtins
    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == 'wandb':
            raise ImportError('No module named wandb')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_wandb)
    writer = MetricWriter(str(tmp_path), rank=0, use_wandb=True)
    writer.scalars({'train/loss': 1.0}, 0)
    writer.close()
    assert writer.wandb is None and 'wandb is not installed' in caplog.text


@pytest.mark.parametrize('level,steps', [('O1', 24), ('O2', 2)])
def test_mixed_precision_training_steps_on_cpu(level, steps):
    """O1 (float16 + GradScaler) and O2 (bfloat16) train a real tiny model; master weights stay float32."""
    torch.manual_seed(0)
    model = tiny_model()
    cfg = OmegaConf.create({'train': {**TRAIN, 'epochs': 1}, 'print_freq': 10, 'data': {'batch_size': 4}})
    opt = build_optimizer(cfg.train, model, 1e-3)
    # O1's GradScaler starts at 2**16 and skips steps (halving it) until float16 gradients stop overflowing
    sched = build_scheduler(cfg.train, opt, scale_lr(cfg.train, 4096, 1), steps)
    text = torch.randint(1, 98, (4, 8))
    text[:, 5] = 99
    batches = iter([{'image': torch.randn(4, 3, 32, 32), 'text': text} for _ in range(steps)])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    precision = Precision(level, 'cpu')
    trainer = Trainer(cfg, model, model, opt, sched, precision, batches, steps, 1, torch.device('cpu'),
                      MetricWriter('unused', rank=1), TrainState())
    averages = train_one_epoch(trainer, 0)
    assert math.isfinite(averages['loss']) and trainer.state.step == steps and trainer.state.nonfinite_total == 0
    if level == 'O1':
        assert precision.scaler.get_scale() < 2.0 ** 16
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert 'img_encoder.pos_embed' in moved and 'text_encoder.positional_embedding' in moved
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_class_embeddings_write_every_class_into_every_template_in_chunks():
    from datasets import tokenize
    model = tiny_model(context_length=20, vocab_size=49408).eval()
    names = ['cat', 'dog', 'potted plant', 'tv', 'sky']
    tcl = ['itap of a {}.', 'a bad photo of a {}.', 'a origami {}.', 'a photo of the large {}.', 'a {} in a video game.',
           'art of the {}.', 'a photo of the small {}.', 'a photo of many {}.', 'a photo of {}s.']
    tokens = tokenize([t.format(n) for n in names for t in tcl], context_length=20).view(5, 9, 20)
    expected = model.build_text_embedding(tokens)
    whole = class_embeddings(model, names, get_templates('custom'))
    chunked = class_embeddings(model, names, get_templates('custom'), max_texts=18)  # 2 classes per forward
    assert whole.shape == (5, 16)
    torch.testing.assert_close(whole, expected)
    torch.testing.assert_close(chunked, expected)
    assert torch.allclose(whole.norm(dim=-1), torch.ones(5))
