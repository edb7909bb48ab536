"""The full-size SegCLIP (ViT-B/16) against the official code (ArrowLuo/SegCLIP): the released state dict's names and
shapes, and, with the same weights, the same outputs in float32 and float64: embeddings, center assignments,
per-crop zero-shot logits and the three training losses (tests/data/README.md says how the reference was made)."""
import json
import re
from pathlib import Path
from unittest.mock import patch

import pytest
import torch

from datasets import tokenize
from models import build_model
from reference_weights import synthetic_state_dict

DATA = Path(__file__).parent / 'data'
REFERENCE_FILE = DATA / 'segclip_reference.pt'
WEIGHT_SEED = 11
REFERENCE_CAPTIONS = ['a dog running on the grass next to a small red car',
                      'two grey cats asleep on an old sofa under the big window of a wooden house by the lake, '
                      'with a lamp, three books, a cup of tea and a plant on the table beside them']
REFERENCE_CLASSES = ['dog', 'cat', 'grass']
BG_THRESH = 0.5
TRAIN_SEED = 5


def segclip_reference_state_dict(state_dict):
    """synthetic_state_dict (seed WEIGHT_SEED) with every LayerNorm weight near 1 (the semantic layer's `cross_ln`,
    `k_ln` and `proj_o.ln` are not named like the norms synthetic_state_dict knows)."""
    out = synthetic_state_dict(state_dict, seed=WEIGHT_SEED)
    return {k: (1 + v if k.endswith('ln.weight') else v) for k, v in out.items()}


def reference_image():
    """[2, 3, 224, 224] float32 standard-normal crops (as if normalised), from a seeded generator."""
    return torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def reference_seg_labels():
    """[2, 14, 14] superpixel ids: horizontal bands in the first image, random ids in the second."""
    bands = torch.arange(14).div(4, rounding_mode='floor')[:, None].expand(14, 14)
    noise = torch.randint(0, 5, (14, 14), generator=torch.Generator().manual_seed(4))
    return torch.stack([bands, noise])


def rel_err(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@pytest.fixture(scope='module')
def full_size():
    torch.manual_seed(0)
    model = build_model(dict(type='SegCLIP', clip_model='ViT-B/16'))
    model.load_state_dict(segclip_reference_state_dict(model.state_dict()), strict=True)
    return model, torch.load(REFERENCE_FILE, weights_only=True)


def test_state_dict_has_the_names_and_shapes_of_segclip_bin(full_size):
    model, _ = full_size
    released = json.loads((DATA / 'segclip_state_dict.json').read_text())['keys']
    assert len(released) == 415
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == released
    # initialised from OpenAI's file: visual block N is layers0.N below 10, layers2.(N - 10) from it
    openai = json.loads((DATA / 'clip_vit_b16_state_dict.json').read_text())['entries']
    mapped = {}
    for name, entry in openai.items():
        if name in ('input_resolution', 'context_length', 'vocab_size'):
            continue
        match = re.match(r'visual\.transformer\.resblocks\.(\d+)\.(.*)', name)
        if match:
            n, rest = int(match[1]), match[2]
            name = f'visual.transformer.layers0.{n}.{rest}' if n < 10 else f'visual.transformer.layers2.{n - 10}.{rest}'
        mapped['clip.' + name] = entry['shape']
    assert len(mapped) == 302 and all(released[k] == shape for k, shape in mapped.items())
    new = set(released) - set(mapped)
    assert len(new) == 113 and sum(k.startswith('vis_mae_decoder.') for k in new) == 44


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_outputs_equal_the_official_code(full_size, dtype):
    model, reference = full_size
    ref = reference[dtype]
    tol = 1e-5 if dtype == 'float32' else 1e-10
    # softmax over centers of logits ~30-60 in size: the official code's own float32 and float64 differ by 2e-5
    soft_tol = 1e-4 if dtype == 'float32' else 1e-10
    model = model.to(getattr(torch, dtype)).eval()
    image = reference_image().to(getattr(torch, dtype))
    captions = tokenize(REFERENCE_CAPTIONS, context_length=32)
    assert captions[1, -1] == 49407 and (captions[1] > 0).all()  # the long caption is cut to start + 30 + end
    with torch.no_grad():
        outs = model.image_forward(image)
        assert rel_err(outs.image_x, ref['image_x']) < tol
        assert rel_err(outs.image_feat, ref['image_feat']) < tol
        assert rel_err(outs.assignment.soft, ref['soft']) < soft_tol
        assert torch.equal(outs.assignment.hard.round(), ref['hard'].round())
        assert rel_err(model.encode_text(captions), ref['caption_x']) < tol
        prompts = tokenize([f'a photo of a {c}.' for c in REFERENCE_CLASSES]).unsqueeze(1)
        text_embedding = model.build_text_embedding(prompts)
        assert rel_err(text_embedding, ref['class_embedding']) < tol
        with patch.object(model, 'image_forward', lambda img: outs):  # the crops just encoded
            logits = model.zero_shot_logits(image, text_embedding, True, BG_THRESH)
    assert rel_err(logits[:, :, ::8, ::8], ref['seg_logits_every_8th']) < tol
    assert torch.equal(logits.argmax(dim=1).to(torch.uint8), ref['seg_labels_full'])
    assert 0 < float(logits[:, 0].mean()) < 1  # both background and classes occur
    model.train()
    torch.manual_seed(TRAIN_SEED)
    with torch.no_grad():  # the values only (the graph would cost time and memory)
        losses = model.forward_train(image, captions, seg_labels=reference_seg_labels())
    assert set(losses) == {'loss', 'loss_kl', 'loss_mae'}
    for key in losses:
        assert torch.isfinite(ref[f'train_{key}']) and ref[f'train_{key}'] > 0
        assert rel_err(losses[key], ref[f'train_{key}']) < tol, key
    total = sum(losses.values())
    assert rel_err(total, ref['train_total']) < tol
