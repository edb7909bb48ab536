"""SegCLIP's pieces on its tiny config (tests/configs/segclip.yml) and hand cases: the encoders, the centers'
batch-mixing quirk and its switch, batches of crops against single crops, the zero-shot rule, the KL and MAE losses,
the optimizer split and schedule, and initialisation from an OpenAI CLIP file."""
import math
from unittest.mock import patch

import pytest
import torch
import torch.nn.functional as F

from conftest import build_tiny, tiny_config
from datasets import tokenize
from models import build_model
from models.segclip.mae import patchify, random_masking
from models.segclip.model import ImageOutputs
from models.segclip.semantic import CenterAssignment, CenterAttentionBlock
from models.superpixel_kl import superpixel_kl_loss
from utils.checkpoint import load_weights
from utils.optim import build_optimizer
from utils.scheduler import build_scheduler, scale_lr

SIZE = 32  # tests/configs/segclip.yml: 32 px, 8 px patches, 4x4 grid


def tiny(seed=0, dtype=torch.float64, **overrides):
    model = build_tiny('segclip', seed=seed)
    for key, value in overrides.items():
        setattr(model, key, value)
    return model.to(dtype)


def images(n, seed=1, dtype=torch.float64):
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def captions(n):
    return tokenize(['a dog on the grass', 'a red car under a blue sky', 'two cats', 'a boat'][:n], context_length=32)


def seg_labels(n, seed=2):
    return torch.randint(0, 3, (n, 4, 4), generator=torch.Generator().manual_seed(seed))


def test_encoders_shapes_and_pooling():
    model = tiny().eval()
    with torch.no_grad():
        out = model.encode_image(images(2), return_feat=True, as_dict=True)
        outs = model.image_forward(images(2))
        text = model.encode_text(captions(2))
    assert out['image_x'].shape == (2, 16) and out['image_feat'].shape == (2, 8, 16) and text.shape == (2, 16)
    assert outs.assignment.soft.shape == outs.assignment.hard.shape == (2, 8, 16)
    torch.testing.assert_close(outs.assignment.soft.sum(dim=1), torch.ones(2, 16, dtype=torch.float64))
    assert torch.equal(outs.assignment.hard.round().sum(dim=1), torch.ones(2, 16, dtype=torch.float64))
    visual = model.clip.visual
    # the image embedding is ln_post of the elementwise max over the 8 centers, projected
    pooled = visual.ln_post(outs.assignment.centers.max(dim=1).values) @ visual.proj
    torch.testing.assert_close(out['image_x'], pooled, rtol=0, atol=1e-12)
    torch.testing.assert_close(out['image_feat'], visual.ln_post(outs.assignment.centers) @ visual.proj)
    with pytest.raises(ValueError, match=r'text must be \[B, L\]'):
        model.encode_text(captions(2)[None])


def test_center_attention_batch_mixing_quirk_reads_the_flattened_batch():
    torch.manual_seed(0)
    block = CenterAttentionBlock(64, 1).double()
    B, G, S, C = 3, 8, 5, 64
    centers, keys = torch.randn(B, G, C, dtype=torch.float64), torch.randn(B, S, C, dtype=torch.float64)
    flat = keys.reshape(B * S, C)
    mixed = torch.stack([flat[[s * B + b for s in range(S)]] for b in range(B)])  # sample b sees tokens s*B + b
    quirk = block(centers, keys, per_sample=False)
    torch.testing.assert_close(quirk, block(centers, mixed, per_sample=True), rtol=0, atol=1e-12)
    assert not torch.allclose(quirk, block(centers, keys, per_sample=True))
    assert torch.equal(block(centers[:1], keys[:1], per_sample=False), block(centers[:1], keys[:1], per_sample=True))


def test_forward_train_reproduces_the_quirk_by_default_and_the_switch_attends_per_sample():
    def losses(model, n):
        model.train()
        torch.manual_seed(7)
        return {k: v.detach() for k, v in model.forward_train(images(n), captions(n), seg_labels=seg_labels(n)).items()}
    published, per_sample = tiny(), tiny(per_sample_center_attention=True)
    assert tiny_config('segclip').model.get('per_sample_center_attention') is None  # the recipe keeps the quirk
    assert published.per_sample_center_attention is False
    mixed, separate = losses(published, 3), losses(per_sample, 3)
    assert set(mixed) == {'loss', 'loss_kl', 'loss_mae'}
    assert not torch.allclose(mixed['loss'], separate['loss'])
    one, one_separate = losses(published, 1), losses(per_sample, 1)
    for key in one:
        assert torch.equal(one[key], one_separate[key]), key
    # inference attends within each sample whatever the switch
    with torch.no_grad():
        assert torch.equal(published.eval().encode_image(images(3)), per_sample.eval().encode_image(images(3)))


def test_a_batch_of_crops_equals_one_crop_at_a_time():
    model = tiny().eval()
    crops = images(4, seed=5)
    with torch.no_grad():
        text = model.build_text_embedding(tokenize(['a dog', 'a cat', 'grass', 'sky']).unsqueeze(1))
        batch = model.zero_shot_logits(crops, text, True, 0.5, top_k=3)
        single = torch.cat([model.zero_shot_logits(crops[i:i + 1], text, True, 0.5, top_k=3) for i in range(4)])
        float32 = model.float().zero_shot_logits(crops.float(), text.float(), True, 0.5, top_k=3)
    assert batch.shape == (4, 5, SIZE, SIZE)
    torch.testing.assert_close(batch, single, rtol=0, atol=1e-12)
    assert torch.equal(batch.argmax(dim=1), single.argmax(dim=1))
    torch.testing.assert_close(float32.double(), batch, rtol=0, atol=1e-5)


def fake_outputs(model, centers_feat, pooled, left_right_centers=(0, 1)):
    """ImageOutputs of one 32x32 crop whose left half is center a's and right half center b's."""
    soft = torch.full((1, 8, 4, 4), 0.01, dtype=torch.float64)
    soft[0, left_right_centers[0], :, :2] = 0.93
    soft[0, left_right_centers[1], :, 2:] = 0.93
    assignment = CenterAssignment(None, None, soft.flatten(2))
    return ImageOutputs(pooled[None], centers_feat[None], assignment, (4, 4))


def test_zero_shot_rule_by_hand():
    """3 classes; center 0 is class 0, center 1 mostly class 1; the pooled embedding keeps classes 0 and 1 (top 2)."""
    model = tiny()
    with torch.no_grad():
        model.clip.logit_scale.fill_(math.log(10.))
    text = torch.eye(3, 16, dtype=torch.float64)
    centers = torch.zeros(8, 16, dtype=torch.float64)
    centers[:, 2] = 1.
    centers[0] = text[0]
    centers[1] = F.normalize(text[1] + 0.5 * text[2], dim=0)
    pooled = text[0] + text[1]
    with patch.object(model, 'image_forward', lambda img: fake_outputs(model, centers, pooled)):
        crop = torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float64)
        no_bg = model.zero_shot_logits(crop, text, False, 0.5, top_k=2)
        all_bg_allowed = model.zero_shot_logits(crop, text, True, 1.0, top_k=2)
        never_bg = model.zero_shot_logits(crop, text, True, 0.0, top_k=2)
    labels = no_bg.argmax(dim=1)[0]
    assert (labels[:, :14] == 0).all() and (labels[:, 18:] == 1).all()
    assert (no_bg[:, 2] == 0).all()  # class 2 is not among the crop's top-2 classes
    # by hand: center 0's scores softmax([10, 0]) x softmax([10, 0, 0]) ...
    s0 = torch.softmax(torch.tensor([10., 0.], dtype=torch.float64), 0)[0] * torch.softmax(
        torch.tensor([10., 0., 0.], dtype=torch.float64), 0)[0]
    torch.testing.assert_close(no_bg[0, 0, 0, 0], s0)
    # ... and center 1's best score is lower: with bg_thresh 1 the threshold is the largest score, center 0's
    assert (all_bg_allowed[0, 0, :, :14] == 0).all() and (all_bg_allowed[0, 0, :, 18:] == 1).all()
    assert (never_bg[0, 0] == 0).all() and torch.equal(never_bg[:, 1:], no_bg)
    assert set(all_bg_allowed[:, 0].unique().tolist()) == {0., 1.}
    with pytest.raises(ValueError, match="published rule"):
        model.zero_shot_logits(crop, text, True, 0.5, bg_rule='tcl')


def test_group_view_shows_the_eight_centers():
    model = tiny().eval()
    text = model.build_text_embedding(tokenize(['a dog', 'a cat']).unsqueeze(1))
    view = model.group_view(images(1), text, bg_thresh=0.9)
    assert len(view.maps) == 1 and view.maps[0].shape == (SIZE, SIZE, 8)
    assert view.affinity.shape == (8, 2)
    assert view.background_threshold == min(0.9, float(view.affinity.max()))


def test_superpixel_kl_loss_by_hand():
    assignment = torch.tensor([[[1., 0.], [0., 1.]]], dtype=torch.float64)
    # two patches of one superpixel: M is [0.5, 0.5] for both
    p = math.e / (math.e + 1)
    kl_m_a = 2 * (0.5 * math.log(0.5 / p) + 0.5 * math.log(0.5 / (1 - p)))
    kl_a_m = 2 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    expected = (kl_m_a / 4 + kl_a_m / 4) / 2
    torch.testing.assert_close(superpixel_kl_loss(assignment, torch.tensor([[3, 3]])),
                               torch.tensor(expected, dtype=torch.float64))
    # one superpixel per patch: the mean is the assignment itself
    assert float(superpixel_kl_loss(assignment, torch.tensor([[0, 1]]))) < 1e-15
    with pytest.raises(ValueError, match=r'\[B, L, G\] and seg_labels \[B, L\]'):
        superpixel_kl_loss(assignment, torch.tensor([[0, 1, 2]]))


def test_mae_masking_patchify_and_loss_by_hand():
    tokens = torch.randn(2, 17, 4, dtype=torch.float64)
    torch.manual_seed(3)
    masking = random_masking(tokens, 0.75)
    torch.manual_seed(3)
    noise = torch.rand(2, 17)
    noise[:, 0] = -1
    keep = noise.argsort(dim=1)[:, :4]  # int(17 * 0.25): the class token and 3 patches
    assert torch.equal(masking.kept, torch.stack([tokens[b, keep[b]] for b in range(2)]))
    assert masking.mask.dtype == torch.float32 and masking.mask.sum(dim=1).tolist() == [13., 13.]
    assert (masking.mask[:, 0] == 0).all()
    assert (masking.mask.gather(1, keep) == 0).all()
    image = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    patches = patchify(image, 2)
    assert patches.shape == (2, 4, 12)
    # patch (row 1, column 0) of image 1, pixel (p=1, q=0), channel 2 sits at (p * 2 + q) * 3 + c
    assert patches[1, 2, (1 * 2 + 0) * 3 + 2] == image[1, 2, 2 * 1 + 1, 0]
    model = tiny()
    decoder = model.vis_mae_decoder
    with torch.no_grad():
        decoder.decoder_pred.weight.zero_()
        decoder.decoder_pred.bias.zero_()
    crops = images(2)
    torch.manual_seed(4)
    masking = random_masking(torch.randn(2, 17, 64, dtype=torch.float64), 0.75)
    loss = decoder.loss(crops, torch.randn(2, 4, 64, dtype=torch.float64), masking)
    target = (patchify(crops, 8) ** 2).mean(dim=-1)  # the prediction is 0
    masked = masking.mask[:, 1:].bool()
    torch.testing.assert_close(loss, target[masked].mean())


def test_forward_train_checks_its_superpixel_input():
    model = tiny().train()
    with pytest.raises(ValueError, match='needs seg_labels'):
        model.forward_train(images(2), captions(2))
    with pytest.raises(ValueError, match='one label per patch'):
        model.forward_train(images(2), captions(2), seg_labels=torch.zeros(2, 3, 3, dtype=torch.long))
    without = tiny(use_seglabel=False, use_vision_mae_recon=False).train()
    assert set(without.forward_train(images(2), captions(2))) == {'loss'}


def test_end_step_clamps_the_logit_scale():
    model = tiny()
    with torch.no_grad():
        model.clip.logit_scale.fill_(6.0)
    model.end_step(0)
    assert float(model.clip.logit_scale.detach()) == pytest.approx(math.log(100))
    with torch.no_grad():
        model.clip.logit_scale.fill_(2.0)
    model.end_step(1)
    assert float(model.clip.logit_scale.detach()) == 2.0


def test_published_optimizer_groups_and_schedule():
    cfg = tiny_config('segclip')
    model = build_tiny('segclip')
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {'clip.token_embedding.weight', 'clip.positional_embedding', 'clip.visual.class_embedding',
                      'clip.visual.positional_embedding', 'clip.visual.conv1.weight', 'clip.visual.ln_pre.weight',
                      'clip.visual.ln_pre.bias', 'vis_mae_decoder.decoder_pos_embed'}
    lrs = scale_lr(cfg.train, 96, 8)
    assert lrs.base_lr == 4e-3  # no batch scaling
    optimizer = build_optimizer(cfg.train, model, lrs.base_lr)
    assert optimizer.defaults['betas'] == (0.9, 0.98) and optimizer.defaults['eps'] == 1e-6
    group_of = {name: g for g in optimizer.param_groups for name in g['names']}
    assert set(group_of) == {n for n, _ in model.named_parameters()} - frozen
    lower = [n for n in group_of if group_of[n]['lr_scale'] == 1e-3]
    assert 'clip.logit_scale' in lower and 'clip.ln_final.weight' in lower and 'clip.text_projection' in lower
    assert all(n.startswith(('clip.transformer.', 'clip.visual.transformer.layers0.', 'clip.ln_final.',
                             'clip.text_projection', 'clip.logit_scale')) for n in lower)
    for name in ('clip.visual.transformer.layers2.0.attn.in_proj_weight', 'clip.visual.proj',
                 'clip.visual.ln_post.weight', 'clip.visual.transformer.semantic_layer2.semantic_center',
                 'clip.visual.transformer.layers_mae2.0.mlp.c_fc.weight', 'vis_mae_decoder.mask_token'):
        assert group_of[name]['lr_scale'] == 1.0, name
    for name, group in group_of.items():  # decay: every name without 'bias' (norm weights too), as published
        assert group['weight_decay'] == (0.0 if 'bias' in name else 0.05), name
    scheduler = build_scheduler(cfg.train, optimizer, lrs, updates_per_epoch=100)
    rates = []
    for step in range(1001):
        scheduler.step_update(step)
        rates.append({g['lr_scale']: g['lr'] for g in optimizer.param_groups})
    assert rates[0][1.0] == 0 and rates[75][1.0] == pytest.approx(2e-3)  # linear warm-up over 150 steps (15%)
    assert rates[150][1.0] == pytest.approx(4e-3) and rates[150][1e-3] == pytest.approx(4e-6)
    assert rates[575][1.0] == pytest.approx(2e-3)  # the cosine starts at the warm-up's end: half way at 575
    assert rates[1000][1.0] == 0


def test_initialises_from_an_openai_clip_file(tmp_path):
    # OpenAI's files give no head count: the reader takes width // 64, so the text tower is 64 wide here
    arch = {**tiny_config('segclip').model.clip_model, 'transformer_width': 64, 'transformer_heads': 1}
    from models.clip import CLIP
    torch.manual_seed(9)
    clip = CLIP(**arch)
    path = tmp_path / 'clip.pt'
    torch.save(clip.state_dict(), path)
    model = build_model(dict(type='SegCLIP', clip_model=str(path), first_stage_layer=2))
    ours = model.state_dict()
    mapped = {}
    for name, value in clip.state_dict().items():
        new = 'clip.' + name
        if name.startswith('visual.transformer.resblocks.'):
            n, rest = name[len('visual.transformer.resblocks.'):].split('.', 1)
            new = (f'clip.visual.transformer.layers0.{n}.{rest}' if int(n) < 2 else
                   f'clip.visual.transformer.layers2.{int(n) - 2}.{rest}')
        mapped[new] = value
        assert torch.equal(ours[new], value), new
    new_tensors = set(ours) - set(mapped)
    assert all(n.startswith(('clip.visual.transformer.semantic_layer2.', 'clip.visual.transformer.layers_mae2.',
                             'clip.visual.transformer.reconstruct_layer2.', 'vis_mae_decoder.')) for n in new_tensors)
    with pytest.raises(ValueError, match='first_stage_layer must be between 1 and 2'):
        build_model(dict(type='SegCLIP', clip_model=arch, first_stage_layer=3))


def test_a_flat_state_dict_file_like_segclip_bin_loads_strictly(tmp_path):
    model = build_tiny('segclip', seed=1)
    path = tmp_path / 'segclip.bin'
    torch.save(model.state_dict(), path)  # the release: a flat torch.save state dict with no prefix
    fresh = build_tiny('segclip', seed=2)
    assert load_weights(fresh, str(path)) == ([], [])
    for (name, value), loaded in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(value, loaded), name
