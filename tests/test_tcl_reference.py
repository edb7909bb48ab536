"""Same weights => same outputs as the published TCL code (kakaobrain/tcl), at full size (ViT-B/16), in float32 and
float64: class text embeddings, CLIP image embeddings, masks with and without PAMR, the masker's similarity map, the
per-crop logits of the published segmentation inference and the six training losses (tests/data/README.md says how
tests/data/tcl_reference.pt was made)."""
from pathlib import Path

import pytest
import torch

from models import build_model
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_FILE = ROOT / 'tests' / 'data' / 'tcl_reference.pt'


def reference_weights(shapes, seed=0):
    """Deterministic weights for a TCL state dict ({name: shape}), filled from one seeded generator in sorted-name
    order: norm weights 1 + noise, residual gates 0.5 + noise (the decoder matters), sim2mask w 10 and b -2.5 plus
    noise (the published initialisation), temperatures 2.5 + noise, everything else 0.05 x noise."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        noise = torch.randn(tuple(shapes[name]), generator=gen, dtype=torch.float32)
        leaf = name.rsplit('.', 1)[-1]
        parent = name.rsplit('.', 2)[-2] if name.count('.') >= 1 else ''
        if parent.startswith(('ln', 'norm')) and leaf == 'weight':
            value = 1 + 0.1 * noise
        elif parent.startswith(('ln', 'norm')) and leaf == 'bias':
            value = 0.1 * noise
        elif name.endswith('gate.gate'):
            value = 0.5 + 0.1 * noise
        elif name == 'masker.sim2mask.w':
            value = 10 + noise
        elif name == 'masker.sim2mask.b':
            value = -2.5 + 0.1 * noise
        elif leaf == 'logit_scale':
            value = 2.5 + 0.2 * noise
        else:
            value = 0.05 * noise
        out[name] = value
    return out


def reference_images(seed, train_shape, crop_shape):
    """The inputs: (training images, segmentation crop), float32 from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(tuple(train_shape), generator=gen), torch.randn(tuple(crop_shape), generator=gen))


def build_full_size_tcl(seed):
    """configs/tcl.yml's TCL (ViT-B/16) holding reference_weights(seed), built without its random initialisation."""
    with torch.device('meta'):
        model = build_model(load_config(str(ROOT / 'configs' / 'tcl.yml')).model)
    mask = torch.full(model.clip_text_encoder.attn_mask.shape, float('-inf')).triu_(1)
    weights = reference_weights({k: v.shape for k, v in model.state_dict().items()}, seed)
    model.load_state_dict(weights, strict=True, assign=True)
    model.clip_text_encoder.register_buffer('attn_mask', mask, persistent=False)
    return model


def max_errors(a, b):
    """(max |a - b|, max |a - b| / max |b|)."""
    diff = (a.double() - b.double()).abs().max().item()
    return diff, diff / b.double().abs().max().item()


@pytest.fixture(scope='module')
def reference():
    return torch.load(REFERENCE_FILE, weights_only=True)


@pytest.fixture(scope='module')
def outputs(reference):
    """Our outputs on the reference's weights and inputs, {dtype: {name: tensor}}."""
    inputs = reference['inputs']
    model = build_full_size_tcl(reference['weight_seed'])
    train_image, crop = reference_images(inputs['image_seed'], inputs['train_shape'], inputs['crop_shape'])
    results = {}
    for dtype_name in ('float32', 'float64'):
        dtype = getattr(torch, dtype_name)
        model = model.to(dtype).eval()
        out = {}
        with torch.no_grad():
            text = model.build_text_embedding(inputs['class_tokens'])
            out['text_embedding'] = text
            out['image_embedding'] = model.encode_image(train_image.to(dtype))
            for pamr in (False, True):
                masks, simmap = model.generate_masks(crop.to(dtype), text, apply_pamr=pamr, kp_w=inputs['kp_w'])
                out['masks_pamr' if pamr else 'masks'] = masks
            out['simmap'] = simmap
            out['logits'] = model.zero_shot_logits(crop.to(dtype), text, True, inputs['bg_thresh'], pamr=True,
                                                   kp_w=inputs['kp_w'])
        torch.manual_seed(inputs['loss_seed'])
        model.train()
        losses = model.forward_train(train_image.to(dtype), inputs['caption_tokens'])
        out['losses'] = {k: v.detach() for k, v in losses.items()}
        results[dtype_name] = out
    return results


# largest relative difference allowed (measured on one machine: float32 identical, float64 1e-15 on PAMR's masks;
# other BLAS builds round differently)
TOLERANCE = {'float32': 1e-5, 'float64': 1e-12}


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_outputs_equal_the_published_code(reference, outputs, dtype):
    ref, ours = reference[dtype], outputs[dtype]
    for name in ('text_embedding', 'image_embedding', 'masks', 'masks_pamr', 'simmap', 'logits'):
        assert ours[name].dtype == getattr(torch, dtype) and ours[name].shape == ref[name].shape, name
    for name in ('text_embedding', 'image_embedding', 'masks', 'masks_pamr', 'simmap'):
        assert max_errors(ours[name], ref[name])[1] < TOLERANCE[dtype], (name, max_errors(ours[name], ref[name]))
    assert max_errors(ours['logits'][:, 1:], ref['logits'][:, 1:])[1] < TOLERANCE[dtype]
    # the background channel: bg_thresh in the input dtype; the published one is always float32(bg_thresh)
    bg_thresh = reference['inputs']['bg_thresh']
    assert torch.equal(ours['logits'][:, 0], torch.full_like(ours['logits'][:, 0], bg_thresh))
    assert torch.equal(ref['logits'][:, 0], torch.full_like(ref['logits'][:, 0], torch.tensor(bg_thresh).item()))
    assert set(ours['losses']) == set(ref['losses']) == {'area_loss', 'neg_area_loss', 'tclf_loss', 'tv_img_loss',
                                                         'tv_mask_loss', 'tcli_loss'}
    for name, value in ref['losses'].items():
        assert torch.isfinite(value) and value > 0, name
        assert ours['losses'][name].dtype == getattr(torch, dtype)
        assert max_errors(ours['losses'][name], value)[1] < TOLERANCE[dtype], (name, ours['losses'][name], value)


def test_reference_outputs_are_not_trivial(reference):
    """The comparison means something: PAMR and the inputs change the masks, the masks are not saturated."""
    ref = reference['float32']
    assert (ref['masks_pamr'] - ref['masks']).abs().max() > 1e-3
    assert 0.01 < ref['masks'].mean() < 0.99 and ref['masks'].std() > 1e-3
    assert torch.equal(ref['logits'][:, 0], torch.full_like(ref['logits'][:, 0], reference['inputs']['bg_thresh']))
    assert (ref['logits'][:, 1:] - ref['masks_pamr']).abs().max() < 1e-6
