"""Same weights => same outputs as the published GroupViT / PGSeg code (see tests/data/README.md)."""
from pathlib import Path

import pytest
import torch

from models import build_model
from reference_weights import synthetic_state_dict

REFERENCE = torch.load(Path(__file__).parent / 'data' / 'published_reference.pt', weights_only=True)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
@pytest.mark.parametrize('name', ['groupvit', 'pgseg'])
def test_outputs_equal_the_published_code(name, dtype):
    entry = REFERENCE[name]
    ref = entry[dtype]
    model = build_model(entry['config'])
    weights = synthetic_state_dict(model.state_dict(), seed=entry['weight_seed'])
    model.load_state_dict(weights, strict=True)
    model = model.to(getattr(torch, dtype)).eval()
    image = entry['image'].to(getattr(torch, dtype))
    text = entry['text']
    with torch.no_grad():
        out = model.encode_image(image, return_feat=True, as_dict=True)
        assert rel_err(out['image_x'], ref['image_x']) < 1e-5
        assert rel_err(out['image_feat'], ref['image_feat']) < 1e-5
        assert rel_err(model.encode_text(text[:, 0]), ref['text_x']) < 1e-5
        attn = model.img_encoder(image, return_attn=True, as_dict=True)['attn_dicts']
        for i in range(2):
            assert rel_err(attn[i]['soft'], ref[f'attn{i}_soft']) < 1e-5
            assert torch.equal(attn[i]['hard'].round(), ref[f'attn{i}_hard'].round())
    model.load_state_dict(weights)  # eval-mode text encoding moved PGSeg's text prototypes, as published
    model.to(getattr(torch, dtype)).train()
    torch.manual_seed(5)
    losses = model.forward_train(image, text if model.multi_label else text[:, 0])
    expected = {k[len('train_'):]: v for k, v in ref.items() if k.startswith('train_')}
    assert set(losses) == set(expected)
    for key, value in expected.items():
        assert torch.isfinite(value)
        assert rel_err(losses[key].detach(), value) < 1e-5, key
