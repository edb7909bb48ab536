"""tools/export_hf.py: our GroupViT/PGSeg checkpoints <-> transformers GroupViTModel folders."""
import json
import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from datasets import tokenize
from models import build_model
from tools import export_hf
from utils.checkpoint import load_checkpoint, save_checkpoint
from conftest import published_state_dict, tiny_config_path
from utils.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(tmp_path, kind='GroupViT', **img):
    """The tiny config of tests/configs (published base, CLIP vocabulary) with `img` overrides and the published
    77-token context (transformers' tokenizer pads to it), written to a file."""
    body = {'_base_': tiny_config_path(kind.lower()), 'data': {'text_aug': {'max_seq_len': 77}},
            'model': {'img_encoder': img}}
    path = tmp_path / f'tiny_{kind}.yml'
    OmegaConf.save(OmegaConf.create(body), path)
    return load_config(str(path)), str(path)


def tiny_checkpoint(tmp_path, kind='GroupViT', with_config=True, **img):
    cfg, cfg_path = tiny_config(tmp_path, kind, **img)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they take part in the comparison
        for name, buf in model.named_buffers():
            if name.endswith(('running_mean', 'running_var')):
                buf.uniform_(0.5, 1.5)
    path = save_checkpoint(str(tmp_path / f'{kind}.pth'), model.state_dict(),
                           extra={'config': cfg} if with_config else None)
    return model.eval(), path, cfg_path


def rel_diff(a, b):
    return float((a - b).abs().max() / a.abs().max())


@torch.no_grad()
def test_groupvit_export_matches_embeddings_and_converts_back(tmp_path, capsys):
    from transformers import AutoImageProcessor, AutoTokenizer, GroupViTModel
    ours, ckpt, _ = tiny_checkpoint(tmp_path)
    out = tmp_path / 'hf'
    export_hf.main([ckpt, str(out)])
    printed = capsys.readouterr().out
    assert 'check: image embeddings' in printed and 'WARNING' not in printed

    hf = GroupViTModel.from_pretrained(str(out)).eval()
    image = torch.randn(3, 3, 32, 32)
    texts = ['a photo of a dog.', 'grass', 'a red fire hydrant on the street']
    assert rel_diff(ours.encode_image(image), hf.get_image_features(pixel_values=image).pooler_output) < 1e-5
    assert rel_diff(ours.encode_text(tokenize(texts)),
                    hf.get_text_features(input_ids=tokenize(texts)).pooler_output) < 1e-5

    hf_tokens = AutoTokenizer.from_pretrained(str(out))(texts, padding='max_length', max_length=77,
                                                        return_tensors='pt')['input_ids']
    ours_tokens = tokenize(texts)
    for mine, theirs in zip(ours_tokens, hf_tokens):
        n = int((mine > 0).sum())
        assert mine[:n].tolist() == theirs[:n].tolist()
    assert rel_diff(ours.encode_text(ours_tokens), hf.get_text_features(input_ids=hf_tokens).pooler_output) < 1e-5

    processor = AutoImageProcessor.from_pretrained(str(out))
    pixels = processor(images=Image.new('RGB', (50, 20), (255, 0, 128)), return_tensors='pt')['pixel_values']
    assert pixels.shape == (1, 3, 32, 32)
    expected = (torch.tensor([255, 0, 128]) / 255 - torch.tensor(export_hf.IMAGENET_MEAN)) / torch.tensor(
        export_hf.IMAGENET_STD)
    assert torch.allclose(pixels[0, :, 10, 10], expected, atol=1e-5)

    back = tmp_path / 'back.pth'
    export_hf.main(['--import', str(out), str(back)])
    original, restored = load_checkpoint(ckpt)['model'], load_checkpoint(str(back))['model']
    assert sorted(original) == sorted(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)
    assert load_config(str(tmp_path / 'back.yml')).model.img_encoder.embed_dim == 32


@torch.no_grad()
def test_import_of_a_plain_transformers_folder_derives_our_config(tmp_path):
    """A folder from elsewhere (no side files): the config comes from transformers' config.json."""
    ours, ckpt, cfg_path = tiny_checkpoint(tmp_path, with_config=False)
    out = tmp_path / 'hf'
    export_hf.main([ckpt, str(out), '--cfg', cfg_path, '--no-check'])
    os.remove(out / export_hf.PROJECT_CONFIG)
    os.remove(out / export_hf.EXTRA_WEIGHTS)
    back = tmp_path / 'plain.pth'
    export_hf.main(['--import', str(out), str(back)])
    cfg = load_config(str(tmp_path / 'plain.yml'))
    model = build_model(cfg.model).eval()
    model.load_state_dict(load_checkpoint(str(back))['model'])
    image, text = torch.randn(2, 3, 32, 32), tokenize(['a cat', 'a dog'])
    assert rel_diff(ours.encode_image(image), model.encode_image(image)) < 1e-6
    assert rel_diff(ours.encode_text(text), model.encode_text(text)) < 1e-6


@torch.no_grad()
def test_pgseg_export_keeps_what_transformers_cannot_hold(tmp_path, capsys):
    from transformers import GroupViTModel
    ours, ckpt, _ = tiny_checkpoint(tmp_path, 'PGSeg')
    out = tmp_path / 'hf'
    export_hf.main([ckpt, str(out)])
    printed = capsys.readouterr().out
    assert 'WARNING' in printed and 'downsample_spatial' in printed
    from safetensors.torch import load_file
    extra = load_file(str(out / export_hf.EXTRA_WEIGHTS))
    assert any('downsample_spatial' in k for k in extra) and 'img_encoder.logit_scale' in extra
    hf = GroupViTModel.from_pretrained(str(out)).eval()
    text = tokenize(['a photo of a dog.', 'sky'])
    assert rel_diff(ours.encode_text(text), hf.get_text_features(input_ids=text).pooler_output) < 1e-5

    back = tmp_path / 'back.pth'
    export_hf.main(['--import', str(out), str(back)])
    original, restored = load_checkpoint(ckpt)['model'], load_checkpoint(str(back))['model']
    assert sorted(original) == sorted(restored)
    assert all(torch.equal(original[k], restored[k]) for k in original)


def test_unexportable_model_and_bad_folder_give_one_line_errors(tmp_path):
    _, ckpt, _ = tiny_checkpoint(tmp_path, stem='conv')
    with pytest.raises(SystemExit) as err:
        export_hf.main([ckpt, str(tmp_path / 'hf')])
    assert 'convolutional stem' in str(err.value) and '\n' not in str(err.value)

    _, plain, _ = tiny_checkpoint(tmp_path, with_config=False)
    with pytest.raises(SystemExit) as err:
        export_hf.main([plain, str(tmp_path / 'hf')])
    assert '--cfg' in str(err.value)

    with pytest.raises(SystemExit) as err:
        export_hf.main(['--import', str(tmp_path), str(tmp_path / 'x.pth')])
    assert 'config.json' in str(err.value)

    (tmp_path / 'broken').mkdir()
    (tmp_path / 'broken' / 'config.json').write_text(json.dumps({'model_type': 'groupvit'}))
    with pytest.raises(SystemExit) as err:
        export_hf.main(['--import', str(tmp_path / 'broken'), str(tmp_path / 'x.pth')])
    assert 'model.safetensors' in str(err.value)




@pytest.mark.parametrize('name,cfg_file,dropped', [
    ('groupvit_gcc_yfcc_30e', 'group_vit_gcc_yfcc_30e.yml', ['multi_label_logit_scale']),
    ('pgseg_specific', 'pgseg_specific.yml', ['img_encoder.layers.0.downsample_spatial.',
                                              'img_encoder.layers.1.downsample_spatial.', 'img_encoder.logit_scale',
                                              'img_encoder.mapping_text.', 'text_encoder.Atten.'])])
def test_published_state_dicts_map_onto_groupvitmodel(name, cfg_file, dropped):
    """Every weight of the published checkpoints (names and shapes from tests/data) maps to a distinct
    GroupViTModel weight of the same shape, or (PGSeg's extra modules) is kept aside."""
    from transformers import GroupViTModel
    shapes = published_state_dict(name)['keys']
    state = {k: torch.zeros(v, device='meta') for k, v in shapes.items()}
    hf_state, extra = export_hf.to_hf_state(state)
    assert all(any(k.startswith(prefix) for prefix in dropped) for k in extra)
    assert all(any(k.startswith(prefix) for k in extra) for prefix in dropped)
    cfg = load_config(os.path.join(ROOT, 'configs', cfg_file))
    config = export_hf.hf_config(cfg.model, {**state, 'logit_scale': torch.tensor(2.0)})
    with torch.device('meta'):
        hf = GroupViTModel(config)
    assert sorted(hf_state) == sorted(hf.state_dict())
    assert all(hf_state[k].shape == v.shape for k, v in hf.state_dict().items())
    assert np.isclose(config.logit_scale_init_value, 2.0)
