"""Checkpoint reading (published format, refusal of unsafe pickles, bad files), atomic saving and weight loading."""
import collections
import logging
import os
import os.path as osp

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

import utils.checkpoint as ckpt
from utils.checkpoint import (CheckpointError, build_and_load, find_latest_checkpoint, is_complete, load_checkpoint,
                              load_weights, read_checkpoint, save_checkpoint)


class Tiny(nn.Module):
    """pos_embed: [1, grid*grid, 4] like the image encoders."""

    def __init__(self, grid=2, extra=False):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.randn(1, grid * grid, 4))
        self.fc = nn.Linear(4, 3)
        self.norm = nn.LayerNorm(3)
        self.register_buffer('counter', torch.arange(5))
        if extra:
            self.head = nn.Linear(3, 2)


def trained_state(model):
    """A published-style training file: model, optimizer, lr_scheduler, metrics, epoch, config, amp."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.fc(model.pos_embed).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 3)
    metrics = collections.defaultdict(float)
    metrics['max_accuracy'] = 12.5
    config = OmegaConf.create({'train': {'base_lr': 1e-3}, 'model': {'type': 'Tiny'}})
    OmegaConf.set_readonly(config, True)
    return {
        'model': model.state_dict(), 'optimizer': optimizer.state_dict(), 'lr_scheduler': scheduler.state_dict(),
        'metrics': metrics, 'epoch': 7, 'config': config, 'max_accuracy': 12.5,
        'amp': collections.OrderedDict(loss_scaler0={'loss_scale': 65536.0, 'unskipped': 0}),
    }


def assert_same_tensors(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


@pytest.mark.parametrize('zip_format', [True, False])
def test_published_training_file_loads(tmp_path, zip_format):
    model = Tiny()
    path = tmp_path / 'ckpt_epoch_7.pth'
    torch.save(trained_state(model), path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(Exception):
        torch.load(path, weights_only=True)
    out = load_checkpoint(path)
    assert_same_tensors(out['model'], model.state_dict())
    assert out['epoch'] == 7 and out['metrics']['max_accuracy'] == 12.5
    assert isinstance(out['metrics'], collections.defaultdict) and out['metrics']['unseen'] == 0.0
    assert out['config'].train.base_lr == 1e-3 and out['amp']['loss_scaler0']['loss_scale'] == 65536.0
    assert out['optimizer']['param_groups'][0]['lr'] == 1e-3 and out['lr_scheduler']['step_size'] == 3
    assert out['scaler'] is None and out['step'] is None


def test_restricted_unpickler_is_used_for_published_files(tmp_path, monkeypatch):
    path = tmp_path / 'published.pth'
    torch.save(trained_state(Tiny()), path)
    seen = []

    def spy(module, name):
        seen.append(f'{module}.{name}')
        return allowed(module, name)

    allowed = ckpt._allowed_global
    monkeypatch.setattr(ckpt, '_allowed_global', spy)
    read_checkpoint(path)
    assert 'omegaconf.dictconfig.DictConfig' in seen and 'collections.defaultdict' in seen


class RunsShell:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command, )


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / 'pwned'
    path = tmp_path / 'evil.pth'
    torch.save({'model': Tiny().state_dict(), 'payload': RunsShell(f'touch {marker}')}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and "refused to unpickle 'posix.system'" in str(err.value)
    assert not marker.exists()
    with pytest.raises(CheckpointError, match='refused'):
        load_weights(Tiny(), path, strict=False)
    assert not marker.exists()


@pytest.mark.parametrize('kind', ['missing', 'empty', 'directory', 'png', 'truncated', 'text', 'safetensors'])
def test_unreadable_files_give_one_clear_error(tmp_path, kind):
    good = tmp_path / 'good.pth'
    torch.save({'model': Tiny().state_dict()}, good)
    path = tmp_path / {'safetensors': 'bad.safetensors'}.get(kind, 'bad.pth')
    if kind == 'empty':
        path.write_bytes(b'')
    elif kind == 'directory':
        path.mkdir()
    elif kind == 'png':
        path.write_bytes(b'\x89PNG\r\n\x1a\n' + bytes(200))
    elif kind == 'truncated':
        path.write_bytes(good.read_bytes()[:len(good.read_bytes()) // 2])
    elif kind in ('text', 'safetensors'):
        path.write_text('hello world, not a checkpoint')
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert message.startswith(str(path)) and '\n' not in message
    assert not is_complete(path)


def test_file_without_state_dict_is_refused(tmp_path):
    path = tmp_path / 'x.pth'
    torch.save({'epoch': 1}, path)
    with pytest.raises(CheckpointError, match="no state dict found"):
        load_weights(Tiny(), path)


@pytest.mark.parametrize('name', ['run/ckpt_epoch_1', 'run/ckpt_epoch_1.pth'])
def test_round_trip_is_exact(tmp_path, name):
    model = Tiny()
    state = trained_state(model)
    scaler = {'scale': 1024.0, 'growth_factor': 2.0, '_growth_tracker': 3}
    path = save_checkpoint(tmp_path / name, state['model'], state['optimizer'], state['lr_scheduler'], scaler,
                           extra={'epoch': 1, 'step': 40, 'config': state['config'], 'metrics': state['metrics']})
    assert is_complete(path)
    out = load_checkpoint(path)
    assert_same_tensors(out['model'], model.state_dict())
    assert out['optimizer']['state'][0]['exp_avg'].equal(state['optimizer']['state'][0]['exp_avg'])
    assert out['optimizer']['param_groups'][0]['betas'] == (0.9, 0.999)
    assert (out['epoch'], out['step'], out['scaler'], out['lr_scheduler']) == (1, 40, scaler, state['lr_scheduler'])
    assert out['config'].model.type == 'Tiny' and out['metrics'] == {'max_accuracy': 12.5}
    state_file = osp.join(path, ckpt.STATE_FILE) if osp.isdir(path) else path
    torch.load(state_file, weights_only=True)
    restored = Tiny()
    optimizer = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    assert load_weights(restored, path) == ([], [])
    optimizer.load_state_dict(out['optimizer'])
    assert_same_tensors(restored.state_dict(), model.state_dict())


def test_shared_tensors_and_unsaveable_extra(tmp_path):
    weight = torch.randn(3, 3)
    path = save_checkpoint(tmp_path / 'tied', {'a': weight, 'b': weight, 'c': weight[0]})
    out = read_checkpoint(path)['model']
    assert torch.equal(out['a'], out['b']) and torch.equal(out['c'], weight[0])
    with pytest.raises(CheckpointError, match=r"cannot save object at checkpoint\['bad'\]"):
        save_checkpoint(tmp_path / 'x', {'a': weight}, extra={'bad': object()})


def test_safetensors_weights_file(tmp_path):
    from safetensors.torch import save_file
    model = Tiny()
    save_file(model.state_dict(), tmp_path / 'w.safetensors')
    restored = Tiny()
    load_weights(restored, tmp_path / 'w.safetensors')
    assert_same_tensors(restored.state_dict(), model.state_dict())


def test_strict_false_reports_missing_unexpected_and_mismatched(tmp_path, caplog):
    source = Tiny(extra=True)
    state = source.state_dict()
    state['fc.weight'] = torch.randn(5, 4)
    state['module.norm.weight'] = state.pop('norm.weight')
    del state['norm.bias']
    torch.save({'model': state}, tmp_path / 'w.pth')
    target = Tiny()
    before = target.fc.weight.detach().clone()
    with pytest.raises(CheckpointError, match=r"missing: norm\.bias; unexpected: head\.weight, head\.bias; "
                                              r"shape mismatch: fc\.weight \(file \(5, 4\), model \(3, 4\)\)"):
        load_weights(target, tmp_path / 'w.pth')
    assert torch.equal(target.fc.weight, before)
    with caplog.at_level(logging.WARNING, logger='utils.checkpoint'):
        missing, unexpected = load_weights(target, tmp_path / 'w.pth', strict=False)
    assert sorted(missing) == ['fc.weight', 'norm.bias'] and sorted(unexpected) == ['head.bias', 'head.weight']
    assert torch.equal(target.fc.weight, before) and torch.equal(target.norm.weight, source.norm.weight)
    assert torch.equal(target.pos_embed, source.pos_embed)
    assert 'head.weight' in caplog.text and 'norm.bias' in caplog.text


def test_pos_embed_is_resized_bicubically(tmp_path):
    source = Tiny(grid=4)
    torch.save({'model': source.state_dict()}, tmp_path / 'w.pth')
    target = Tiny(grid=2)
    assert load_weights(target, tmp_path / 'w.pth') == ([], [])
    grid = source.pos_embed.detach().reshape(1, 4, 4, 4).permute(0, 3, 1, 2)
    expected = torch.nn.functional.interpolate(grid, size=(2, 2), mode='bicubic', align_corners=False)
    assert torch.allclose(target.pos_embed.detach(), expected.permute(0, 2, 3, 1).reshape(1, 4, 4))


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = Tiny()
    first = save_checkpoint(tmp_path / 'ckpt_epoch_1', model.state_dict(), extra={'epoch': 1})
    first_pth = save_checkpoint(tmp_path / 'checkpoint.pth', model.state_dict(), extra={'epoch': 1})
    os.utime(first_pth, ns=(1, 1))
    newer = Tiny()

    def crash(*args):
        raise OSError('disk died')

    monkeypatch.setattr(os, 'replace', crash)
    for name in ('ckpt_epoch_2', 'ckpt_epoch_1', 'checkpoint.pth'):
        with pytest.raises(OSError, match='disk died'):
            save_checkpoint(tmp_path / name, newer.state_dict(), extra={'epoch': 2})
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ['checkpoint.pth', 'ckpt_epoch_1']
    assert find_latest_checkpoint(tmp_path) == first
    for path in (first, first_pth):
        out = load_checkpoint(path)
        assert out['epoch'] == 1
        assert_same_tensors(out['model'], model.state_dict())


def test_find_latest_skips_incomplete(tmp_path):
    assert find_latest_checkpoint(tmp_path) is None
    model = Tiny()
    older = save_checkpoint(tmp_path / 'ckpt_epoch_9', model.state_dict())
    newer = save_checkpoint(tmp_path / 'ckpt_epoch_10', model.state_dict())
    os.utime(older, ns=(5, 5))
    os.utime(newer, ns=(5, 5))
    assert find_latest_checkpoint(tmp_path) == newer
    os.remove(osp.join(newer, ckpt.STATE_FILE))
    (tmp_path / 'ckpt_epoch_11.pth').write_bytes(b'PK\x03\x04 torn')
    (tmp_path / '.ckpt_epoch_12.abc.tmp').mkdir()
    assert find_latest_checkpoint(tmp_path) == older
    save_checkpoint(tmp_path / 'ckpt_epoch_9', Tiny().state_dict(), extra={'epoch': 9})
    assert load_checkpoint(older)['epoch'] == 9


def test_published_format_into_a_tiny_model(tmp_path):
    from models import build_model
    cfg = OmegaConf.create({
        'type': 'MultiLabelContrastive', 'output_dim': 16, 'multi_label': 0,
        'img_encoder': {'type': 'GroupViT', 'img_size': 64, 'embed_dim': 32, 'num_heads': [2, 2, 2],
                        'depths': [1, 1, 1], 'num_group_tokens': [8, 4, 0], 'num_output_groups': [8, 4],
                        'drop_path_rate': 0.0},
        'text_encoder': {'type': 'TextTransformer', 'context_length': 77, 'width': 32, 'layers': 1,
                         'vocab_size': 49408},
    })
    source = build_model(cfg)
    state = trained_state(Tiny())
    state['model'] = collections.OrderedDict(source.state_dict())
    torch.save(state, tmp_path / 'published.pth')
    target = build_model(cfg)
    assert load_weights(target, tmp_path / 'published.pth') == ([], [])
    assert_same_tensors(target.state_dict(), source.state_dict())
    small = build_and_load(OmegaConf.merge(cfg, {'img_encoder': {'img_size': 32}}), tmp_path / 'published.pth')
    assert small.img_encoder.pos_embed.shape[1] * 4 == source.img_encoder.pos_embed.shape[1]
    assert torch.equal(small.text_encoder.token_embedding.weight, source.text_encoder.token_embedding.weight)


def test_build_and_load_is_strict_unless_told(tmp_path):
    from models import build_model
    cfg = OmegaConf.create({
        'type': 'MultiLabelContrastive', 'output_dim': 16, 'multi_label': 0,
        'img_encoder': {'type': 'GroupViT', 'img_size': 32, 'patch_size': 8, 'embed_dim': 16, 'num_heads': [2, 2],
                        'depths': [1, 1], 'embed_factors': [1, 1], 'num_group_tokens': [4, 0],
                        'num_output_groups': [2]},
        'text_encoder': {'type': 'TextTransformer', 'context_length': 8, 'width': 16, 'layers': 1, 'vocab_size': 100},
    })
    torch.manual_seed(0)
    source = build_model(cfg)
    save_checkpoint(tmp_path / 'ckpt', source.state_dict())
    assert_same_tensors(build_and_load(cfg, tmp_path / 'ckpt').state_dict(), source.state_dict())
    fresh = build_and_load(cfg)
    assert not torch.equal(fresh.img_encoder.pos_embed, source.img_encoder.pos_embed)
    deeper = OmegaConf.merge(cfg, {'text_encoder': {'layers': 2}})
    with pytest.raises(CheckpointError, match=r'ckpt does not fit MultiLabelContrastive: missing: text_encoder'):
        build_and_load(deeper, tmp_path / 'ckpt')
    partial = build_and_load(deeper, tmp_path / 'ckpt', strict=False)
    assert torch.equal(partial.img_encoder.pos_embed, source.img_encoder.pos_embed)


@pytest.mark.parametrize('cfg_name,ref_name', [('group_vit_gcc_yfcc_30e', 'official_state_dict_groupvit_gcc_yfcc_30e'),
                                               ('pgseg_specific', 'official_state_dict_pgseg_specific')])
def test_published_key_layout_loads_strictly(tmp_path, cfg_name, ref_name):
    from conftest import published_state_dict
    from models import build_model
    from utils.config import load_config
    root = osp.dirname(osp.dirname(osp.abspath(__file__)))
    shapes = published_state_dict(ref_name.replace('official_state_dict_', ''))['keys']
    torch.save({'model': {name: torch.zeros(shape) for name, shape in shapes.items()}}, tmp_path / 'published.pth')
    model = build_model(load_config(osp.join(root, 'configs', f'{cfg_name}.yml')).model)
    assert load_weights(model, tmp_path / 'published.pth') == ([], [])
    assert all(v.abs().sum() == 0 for k, v in model.state_dict().items() if v.is_floating_point())
