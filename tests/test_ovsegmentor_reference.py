"""Same weights => same outputs as the official OVSegmentor code, at full size (ViT-B + BERT-base, stage 2), in float32
and float64: encoders, group assignments and their queries/keys, class embeddings, per-crop group maps and logits,
the three losses (eval mode, and train mode from one seed), and gradients. See tests/data/README.md for how
tests/data/ovsegmentor_reference.pt was made."""
from pathlib import Path

import pytest
import torch
from models import build_model
from reference_weights import synthetic_state_dict
from utils.config import load_config

DATA = Path(__file__).parent / 'data'
REFERENCE = torch.load(DATA / 'ovsegmentor_reference.pt', weights_only=True)
STAGE2 = Path(__file__).parents[1] / 'configs' / 'ovsegmentor' / 'ovsegmentor_pretrain_vit_bert_stage2.yml'
POSITION_IDS = 'text_encoder.transformer.embeddings.position_ids'
TOLERANCE = {'float32': 1e-5, 'float64': 1e-12}  # measured: outputs equal; gradients 1e-6 and 5e-15
# float32 gradients are sums over many elements whose order follows the thread count (3e-5 seen with one thread)
GRADIENT_TOLERANCE = {'float32': 1e-4, 'float64': 1e-12}


def reference_inputs(seed: int = 3, batch: int = 2, length: int = 77):
    """The inputs of the reference run, regenerated from their seed: images [2, 3, 224, 224], BERT token dicts
    (random ids between [CLS] and [SEP], [MASK] 103 in the questions), 3 classes x 2 prompts, a [1, 3, 224, 288] crop."""
    gen = torch.Generator().manual_seed(seed)

    def tokens(lengths, mask_positions=()):
        ids = torch.zeros(len(lengths), length, dtype=torch.long)
        for i, n in enumerate(lengths):
            ids[i, 0], ids[i, n - 1] = 101, 102
            ids[i, 1:n - 1] = torch.randint(1000, 30000, (n - 2,), generator=gen)
            for p in mask_positions:
                if p < n - 1:
                    ids[i, p] = 103
        return {'input_ids': ids, 'attention_mask': (ids != 0).long()}

    inputs = {'image': torch.randn(batch, 3, 224, 224, generator=gen),
              'cross_image': torch.randn(batch, 3, 224, 224, generator=gen),
              'text': tokens([14, 23]), 'question': tokens([14, 23], mask_positions=(3, 9)),
              'answer': tokens([9, 11]), 'cross_entity': tokens([6, 5])}
    classes = tokens([6, 8, 7, 9, 6, 5])
    longest = int(classes['attention_mask'].sum(-1).max())
    classes = {k: v[:, :longest] for k, v in classes.items()}
    crop = torch.randn(1, 3, 224, 288, generator=gen)
    return inputs, classes, crop


def sample(t: torch.Tensor, count: int = 256) -> torch.Tensor:
    """`count` evenly spaced values of a tensor (a fingerprint of a large gradient)."""
    flat = t.flatten()
    return flat[torch.linspace(0, flat.numel() - 1, min(count, flat.numel())).long()]


def compact(outputs: dict) -> dict:
    """What the stored reference keeps of a full set of outputs (it stays a few hundred kB): large maps strided,
    gradients as their norm and 256 evenly spaced values."""
    out = {}
    for key, value in outputs.items():
        if key == 'attn0_q':
            value = value[..., ::4]
        elif key == 'attn0_k':
            value = value[:, :, ::14, ::4]
        elif key == 'group_map':
            value = value[:, ::8, ::8]
        elif key == 'seg_logits':
            value = value[..., ::8, ::8]
        elif key.startswith('grad:'):
            out[key + ':norm'] = value.norm()
            value = sample(value)
        out[key] = value.clone()
    return out


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30))


@pytest.fixture(scope='module')
def model_and_weights():
    cfg = load_config(str(STAGE2))
    cfg.model.img_encoder.imgnet_pretrained_checkpoint = None
    cfg.model.text_encoder.pretrained_path = None
    cfg.model.text_encoder.fixed = False  # the reference run trains BERT too, so its gradients can be compared
    torch.manual_seed(0)
    model = build_model(cfg.model)
    state = model.state_dict()
    weights = synthetic_state_dict(state, seed=REFERENCE['weight_seed'])
    weights[POSITION_IDS] = state[POSITION_IDS]
    return model, weights


def our_outputs(model, weights, dtype) -> dict:
    from models.groupvit.segmentation import final_group_maps
    from segmentation.evaluation import zero_shot_logits
    inputs, class_tokens, crop = reference_inputs()
    cast = lambda x: {k: cast(v) for k, v in x.items()} if isinstance(x, dict) else (  # noqa: E731
        x.to(dtype) if x.is_floating_point() else x)
    model.load_state_dict(weights)
    model.to(dtype).eval()
    x, crop = cast(inputs), crop.to(dtype)
    out = {}
    with torch.no_grad():
        # one encoder pass gives encode_image's outputs and the attention dicts of img_encoder(return_attn=True)
        parts = model.encode_image_parts(x['image'], model.img_encoder)
        out['image_x'], out['image_feat'] = parts['image_x'], parts['image_feat']
        out['text_x'] = model.encode_text(x['text'])
        for key in ('soft', 'hard', 'q', 'k'):
            out[f'attn0_{key}'] = parts['attn_dicts'][0][key]
        classes = model.build_text_embedding({k: v.view(3, 2, -1) for k, v in class_tokens.items()})
        out['class_embedding'] = classes
        crop_attn = model.img_encoder(crop, return_attn=True, as_dict=True)['attn_dicts']
        out['group_map'] = final_group_maps(crop_attn, crop.shape[-2:])
        out['seg_logits'] = zero_shot_logits(model, crop, classes, True, REFERENCE['bg_thresh'])
    losses = model.forward_train(**x)
    for key in ('matching', 'entity', 'mask', 'loss'):
        out[f'eval_{key}'] = losses[key].detach()
    model.zero_grad()
    losses['loss'].backward()
    params = dict(model.named_parameters())
    for name in REFERENCE['grad_names']:
        out[f'grad:{name}'] = params[name].grad.detach()
    model.zero_grad()
    model.load_state_dict(weights)
    model.to(dtype).train()
    torch.manual_seed(REFERENCE['train_seed'])
    losses = model.forward_train(**x)
    for key in ('matching', 'entity', 'mask', 'loss'):
        out[f'train_{key}'] = losses[key].detach()
    return compact(out)


def test_inputs_regenerate_from_their_seed():
    inputs, class_tokens, crop = reference_inputs()
    for key, value in REFERENCE['input_sums'].items():
        tensor = crop if key == 'crop' else inputs[key]
        torch.testing.assert_close(tensor.double().sum(), value, rtol=0, atol=1e-6)
    for key in ('text', 'question', 'answer', 'cross_entity'):
        for name, value in REFERENCE['tokens'][key].items():
            assert torch.equal(inputs[key][name], value), key
    assert all(torch.equal(class_tokens[k], v) for k, v in REFERENCE['class_tokens'].items())


def test_state_dict_has_the_released_names(model_and_weights):
    import json
    model, _ = model_and_weights
    released = json.loads((DATA / 'ovsegmentor_state_dict.json').read_text())['keys']
    state = model.state_dict()
    assert sorted(state) == sorted(released)
    assert {k: list(v.shape) for k, v in state.items()} == {k: v[0] for k, v in released.items()}


@pytest.mark.parametrize('dtype', ['float32', 'float64'])
def test_outputs_equal_the_official_code(model_and_weights, dtype):
    model, weights = model_and_weights
    ours = our_outputs(model, weights, getattr(torch, dtype))
    expected = REFERENCE[dtype]
    assert set(ours) == set(expected)
    for key, value in expected.items():
        if key == 'attn0_hard':
            assert torch.equal(ours[key].round(), value.round()), key
            continue
        assert ours[key].dtype == value.dtype, key
        tolerance = (GRADIENT_TOLERANCE if key.startswith('grad:') else TOLERANCE)[dtype]
        assert rel_err(ours[key], value) < tolerance, (key, rel_err(ours[key], value))
