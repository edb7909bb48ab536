"""TCL (models/tcl) on the tiny model of tests/configs/tcl.yml: checkpoint loading rules, the padding and order of
generate_masks, the losses on hand cases, the Gumbel draw, the UST phase and the step schedule."""
import json
import math
import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from conftest import build_tiny, tiny_model_cfg
from models import build_model
from models.pamr import PAMR
from models.tcl import compute_padsize, masked_pool
from models.tcl.modules import ExtendedInfoNCE, InfoNCE, area_loss, tv_loss
from utils.checkpoint import CheckpointError, load_weights
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / 'tests' / 'data'
TEMPERATURES = ('tcli_loss.logit_scale', 'tclf_loss.logit_scale')


def captions(model, n=3):
    return model.tokenize(['a dog on the grass', 'a red car', 'two cats under the sky', 'a ring'][:n])


def class_embedding(model):
    return model.build_text_embedding(model.tokenize(['a cat', 'a dog', 'the sky']).view(3, 1, -1))


# ----- the published state dict ---------------------------------------------------------------------------------
def test_full_size_model_has_the_published_names_and_shapes():
    full = json.loads((DATA / 'tcl_full_state_dict.json').read_text())
    release = json.loads((DATA / 'tcl_release_state_dict.json').read_text())
    with torch.device('meta'):
        model = build_model(load_config(str(ROOT / 'configs' / 'tcl.yml')).model)
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert state == full['keys'] and len(state) == 340
    assert {k: v for k, v in state.items() if k.startswith('masker.')} == release['keys']
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {k for k in state if k.startswith(('clip_image_encoder.', 'clip_text_encoder.'))}
    assert set(release['may_also_hold']) == set(TEMPERATURES)


# ----- checkpoints ------------------------------------------------------------------------------------------------
@pytest.fixture(scope='module')
def clip_file(tmp_path_factory):
    """A tiny CLIP file (OpenAI's names, torch.save) and the TCL built on it."""
    from models.clip import build_clip
    torch.manual_seed(11)
    clip = build_clip(OmegaConf.to_container(tiny_model_cfg('tcl').clip_model))
    path = tmp_path_factory.mktemp('clip') / 'tiny_clip.pt'
    torch.save(clip.state_dict(), path)
    return str(path), clip.state_dict()


def tcl_on(clip_path, seed):
    torch.manual_seed(seed)
    return build_model(tiny_model_cfg('tcl', clip_model=clip_path))


def release_file(path, model, temperatures=()):
    """What the released tcl.pth holds: {'model': the masker's tensors (+ optionally the temperatures)}."""
    state = model.state_dict()
    weights = {k: v for k, v in state.items() if k.startswith('masker.') or k in temperatures}
    torch.save({'model': weights}, path)
    return str(path)


def test_release_loads_strictly_with_the_clip_of_clip_model(clip_file, tmp_path):
    clip_path, clip_state = clip_file
    trained = tcl_on(clip_path, seed=1)
    with torch.no_grad():
        for name in TEMPERATURES:
            trained.get_parameter(name).fill_(3.3)
    model = tcl_on(clip_path, seed=2)
    assert load_weights(model, release_file(tmp_path / 'tcl.pth', trained)) == ([], [])
    for name, value in trained.state_dict().items():
        if name.startswith('masker.'):
            assert torch.equal(model.state_dict()[name], value), name
    assert torch.equal(model.clip_image_encoder.clip_visual.conv1.weight, clip_state['visual.conv1.weight'])
    assert torch.equal(model.clip_text_encoder.token_embedding.weight, clip_state['token_embedding.weight'])
    for name in TEMPERATURES:  # absent from the file: the initial log(1/0.07)
        assert model.get_parameter(name).item() == pytest.approx(math.log(1 / 0.07))
    load_weights(model, release_file(tmp_path / 'tcl_t.pth', trained, TEMPERATURES))
    assert all(model.get_parameter(name).item() == pytest.approx(3.3) for name in TEMPERATURES)


def test_release_with_random_clip_warns(tmp_path, caplog):
    model = build_tiny('tcl', seed=3)
    with caplog.at_level('WARNING'):
        load_weights(model, release_file(tmp_path / 'tcl.pth', build_tiny('tcl', seed=4)))
    assert 'RANDOM' in caplog.text and 'clip_model' in caplog.text


def test_strict_apart_from_the_documented_omissions(clip_file, tmp_path):
    clip_path, _ = clip_file
    model = tcl_on(clip_path, seed=5)
    state = {k: v for k, v in model.state_dict().items() if k.startswith('masker.')}
    missing = dict(state)
    missing.pop('masker.sim2mask.b')
    torch.save({'model': missing}, tmp_path / 'missing.pth')
    with pytest.raises(CheckpointError, match='missing: masker.sim2mask.b'):
        load_weights(model, str(tmp_path / 'missing.pth'))
    torch.save({'model': {**state, 'masker.extra.weight': torch.zeros(2)}}, tmp_path / 'extra.pth')
    with pytest.raises(CheckpointError, match='unexpected: masker.extra.weight'):
        load_weights(model, str(tmp_path / 'extra.pth'))
    # a file with some CLIP tensors is not the release: the rest of the CLIP is missing
    partial = {**state, 'clip_text_encoder.ln_final.weight': model.state_dict()['clip_text_encoder.ln_final.weight']}
    torch.save({'model': partial}, tmp_path / 'partial.pth')
    with pytest.raises(CheckpointError, match='missing: clip_'):
        load_weights(model, str(tmp_path / 'partial.pth'))


def published_training_checkpoint(path, model, pamr_kernels=True):
    """What the published trainer's save_checkpoint writes: the full state dict (+ the lazily built PAMR's constant
    kernels), optimizer, lr_scheduler, scaler, step and the OmegaConf config."""
    state = dict(model.state_dict())
    if pamr_kernels:
        from models.pamr import _OFFSETS
        copy_kernel, diff_kernel = torch.zeros(8, 1, 3, 3), torch.zeros(8, 1, 3, 3)
        for i, (dy, dx) in enumerate(_OFFSETS):
            copy_kernel[i, 0, 1 + dy, 1 + dx] = 1
            diff_kernel[i, 0, 1, 1], diff_kernel[i, 0, 1 + dy, 1 + dx] = 1, -1
        state.update({'pamr.aff_x.kernel': diff_kernel, 'pamr.aff_m.kernel': copy_kernel,
                      'pamr.aff_std.kernel': torch.eye(9).view(9, 1, 3, 3)})
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, eps=1e-6)
    torch.save({'model': state, 'optimizer': optimizer.state_dict(), 'lr_scheduler': {'last_epoch': 5000},
                'scaler': {'scale': 65536.0}, 'step': 5000, 'config': OmegaConf.create({'model': {'type': 'TCL'}})},
               path)
    return str(path)


def test_published_training_checkpoint_loads_and_pamr_kernels_are_ignored(tmp_path):
    trained = build_tiny('tcl', seed=6)
    path = published_training_checkpoint(tmp_path / 'checkpoint.pth', trained)
    model = build_tiny('tcl', seed=7)
    assert load_weights(model, path) == ([], [])
    for name, value in trained.state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    torch.save({'model': {**trained.state_dict(), 'pamr.other.kernel': torch.zeros(1)}}, tmp_path / 'other.pth')
    with pytest.raises(CheckpointError, match='unexpected: pamr.other.kernel'):
        load_weights(model, str(tmp_path / 'other.pth'))


class RunsCode:
    def __reduce__(self):
        return os.system, ('touch /tmp/tcl_checkpoint_payload_ran',)


def test_code_running_checkpoint_is_refused(tmp_path):
    marker = Path('/tmp/tcl_checkpoint_payload_ran')
    marker.unlink(missing_ok=True)
    path = tmp_path / 'evil.pth'
    with zipfile.ZipFile(path, 'w') as archive:
        archive.writestr('archive/data.pkl', pickle.dumps({'model': {'masker.sim2mask.w': RunsCode()}}, protocol=2))
        archive.writestr('archive/version', '3\n')
    with pytest.raises(CheckpointError, match="refused to unpickle 'posix.system'"):
        load_weights(build_tiny('tcl'), str(path))
    assert not marker.exists()


def test_position_embedding_resize_rule_of_tcl():
    from models.clip import resize_positional_embedding
    pos = torch.randn(1 + 14 * 14, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = pos[1:].reshape(1, 14, 14, 8).permute(0, 3, 1, 2)
    resized = resize_positional_embedding(pos, (21, 28), 'size')
    by_size = F.interpolate(grid, size=(21, 28), mode='bicubic', align_corners=False)
    assert torch.equal(resized[0], pos[0]) and torch.equal(resized[1:], by_size.permute(0, 2, 3, 1).reshape(-1, 8))
    assert not torch.allclose(resized, resize_positional_embedding(pos, (21, 28)))
    assert resize_positional_embedding(pos, (14, 14), 'size') is pos
    # a grid with the native token count that is not square: TCL resizes it, the default rule keeps it
    assert resize_positional_embedding(pos, (7, 28), 'size').shape == pos.shape
    assert not torch.equal(resize_positional_embedding(pos, (7, 28), 'size'), pos)
    assert resize_positional_embedding(pos, (7, 28)) is pos
    with pytest.raises(ValueError, match='resize rule'):
        resize_positional_embedding(pos, (7, 28), 'nearest')
    assert build_tiny('tcl').clip_image_encoder.clip_visual.pos_embed_resize == 'size'


# ----- masks --------------------------------------------------------------------------------------------------------
def test_padsize_centres_the_padding():
    assert compute_padsize(37, 50, 8) == (3, 3, 1, 2)  # (left, right, top, bottom): 50 -> 56, 37 -> 40
    assert compute_padsize(48, 64, 16) == (0, 0, 0, 0)
    assert compute_padsize(40, 57, 16) == (3, 4, 4, 4)


def test_generate_masks_pads_centred_and_crops_back():
    model = build_tiny('tcl').eval()
    text = class_embedding(model)
    image = torch.randn(2, 3, 37, 50, generator=torch.Generator().manual_seed(0))
    masks, simmap = model.generate_masks(image, text, apply_pamr=True, kp_w=0.3)
    assert masks.shape == (2, 3, 37, 50) and simmap.shape == (2, 3, 4 * 5, 4 * 7)
    padded = F.pad(image, (3, 3, 1, 2))  # zero padding, centred
    masks_padded, simmap_padded = model.generate_masks(padded, text, apply_pamr=True, kp_w=0.3)
    assert masks_padded.shape == (2, 3, 40, 56)
    assert torch.equal(simmap, simmap_padded)
    assert torch.equal(masks, masks_padded[:, :, 1:38, 3:53])
    shifted = F.pad(image, (0, 6, 0, 3))  # the same pixels padded elsewhere give other masks
    assert not torch.allclose(model.generate_masks(shifted, text)[0][:, :, :37, :50], masks, atol=1e-4)


def test_pamr_runs_before_the_keep_prompt_mix():
    model = build_tiny('tcl').eval()
    text = class_embedding(model)
    image = torch.randn(1, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    kp_w = 0.3
    with torch.no_grad():
        grid = model.clip_image_encoder.clip_visual.patch_grid(image)
        clip_dense, feat = model.clip_image_encoder.dense(image, model.ie_freeze, True)
        soft, _ = model.masker.forward_seg(feat, grid, text)
        small = F.interpolate(image, soft.shape[-2:], mode='bilinear', align_corners=True)
        keep = torch.sigmoid((torch.einsum('bchw,nc->bnhw', F.normalize(
            model.clip_image_encoder.clip_proj(clip_dense), dim=1, eps=1e-6), F.normalize(text, dim=-1)) - 0.25) * 10)
        keep = F.interpolate(keep, soft.shape[-2:], mode='bilinear')
        pamr = PAMR(10, (1, 2, 4, 8, 12, 24))
        published = kp_w * keep + (1 - kp_w) * pamr(small, soft)
        other_order = pamr(small, kp_w * keep + (1 - kp_w) * soft)
        expected = F.interpolate(published, (32, 48), mode='bilinear')
    masks, _ = model.generate_masks(image, text, apply_pamr=True, kp_w=kp_w)
    torch.testing.assert_close(masks, expected, rtol=1e-5, atol=1e-6)
    assert (F.interpolate(other_order, (32, 48), mode='bilinear') - masks).abs().max() > 1e-4
    without_kp, _ = model.generate_masks(image, text, apply_pamr=True, kp_w=0)
    torch.testing.assert_close(without_kp, F.interpolate(pamr(small, soft), (32, 48), mode='bilinear'))


def test_zero_shot_logits_prepend_a_constant_background_without_softmax():
    model = build_tiny('tcl').eval()
    text = class_embedding(model)
    crop = torch.randn(2, 3, 32, 32)
    logits = model.zero_shot_logits(crop, text, True, 0.4, pamr=False, kp_w=0.3)
    masks, _ = model.generate_masks(crop, text, apply_pamr=False, kp_w=0.3)
    assert logits.shape == (2, 4, 32, 32) and torch.equal(logits[:, 1:], masks)
    assert torch.equal(logits[:, 0], torch.full_like(logits[:, 0], 0.4))
    assert (masks.sum(dim=1) - 1).abs().max() > 1e-2  # sigmoid masks, not a softmax over classes
    assert torch.equal(model.zero_shot_logits(crop, text, False, 0.4, pamr=False, kp_w=0.3), masks)


def test_text_embedding_averages_the_unnormalised_prompts():
    model = build_tiny('tcl').eval()
    tokens = model.tokenize(['a cat', 'a photo of a cat', 'a dog', 'a photo of many dogs']).view(2, 2, -1)
    raw = model.encode_text(tokens.flatten(0, 1)).view(2, 2, -1)
    torch.testing.assert_close(model.build_text_embedding(tokens), F.normalize(raw.mean(1), dim=-1))
    normalised_first = F.normalize(F.normalize(raw, dim=-1).mean(1), dim=-1)
    assert (model.build_text_embedding(tokens) - normalised_first).abs().max() > 1e-4


# ----- losses -------------------------------------------------------------------------------------------------------
def test_losses_on_hand_cases():
    x = torch.tensor([[[[0., 1., 3.], [2., 2., 2.]]]])  # horizontal |d|: 1, 2, 0, 0; vertical: 2, 1, 1
    assert tv_loss(x).item() == pytest.approx(3 / 4 + 4 / 3)
    assert area_loss(torch.tensor([0.2, 0.3, 0.9, 0.2]), 0.4).item() == pytest.approx(0.0)
    assert area_loss(torch.full((2, 3), 0.7), 0.4).item() == pytest.approx(0.3)
    dense = torch.randn(1, 4, 3, 3)
    mask = torch.zeros(1, 2, 3, 3)
    mask[0, 0, 1, 2] = 1
    mask[0, 1] = 1
    pooled = masked_pool(dense, mask)
    torch.testing.assert_close(pooled[0, 0], dense[0, :, 1, 2] / (1 + 1e-6))
    torch.testing.assert_close(pooled[0, 1], dense[0].sum((1, 2)) / (9 + 1e-6))

    s = 5.0
    text = torch.eye(3, 8)  # orthonormal captions
    info = InfoNCE()
    with torch.no_grad():
        info.logit_scale.fill_(math.log(s))
    matched = math.log(1 + 2 * math.exp(-s))  # own pair at s, the two others at 0
    assert info(2 * text, text).item() == pytest.approx(matched, rel=1e-6)
    assert info(text.flip(0), text).item() > 1.0
    extended = ExtendedInfoNCE()
    with torch.no_grad():
        extended.logit_scale.fill_(math.log(s))
    own_region = text[:, None, :].expand(3, 3, 8)  # image i's region for every caption looks like caption i
    assert extended(own_region, text).item() == pytest.approx(matched, rel=1e-6)
    same_everywhere = text[None, :, :].expand(3, 3, 8)  # every image's region for caption j looks like caption j
    assert extended(same_everywhere, text).item() == pytest.approx(math.log(3), rel=1e-6)
    with torch.no_grad():
        extended.logit_scale.fill_(10.0)  # exp(10) is clamped at 100
    assert extended(own_region, text).item() == pytest.approx(math.log(1 + 2 * math.exp(-100)), abs=1e-12)


def test_forward_train_terms_and_weights():
    model = build_tiny('tcl').train()
    image, text = torch.randn(3, 3, 32, 32), captions(model)
    torch.manual_seed(0)
    terms = model.forward_train(image, text)
    assert list(terms) == ['area_loss', 'neg_area_loss', 'tclf_loss', 'tv_img_loss', 'tv_mask_loss', 'tcli_loss']
    assert all(v.dim() == 0 and torch.isfinite(v) and v > 0 for v in terms.values())
    half = build_model(tiny_model_cfg('tcl', tcl_w=0.05, area_w=0.2, tv_w=0.0))
    half.load_state_dict(model.state_dict(), strict=False)
    torch.manual_seed(0)
    halved = half.forward_train(image, text)
    assert set(halved) == {'area_loss', 'neg_area_loss', 'tclf_loss', 'tcli_loss'}
    for name in halved:
        torch.testing.assert_close(halved[name], terms[name] / 2)
    untied = build_model(tiny_model_cfg('tcl', tcl_w=0.0))
    assert not any(name in dict(untied.named_parameters()) for name in TEMPERATURES)
    with pytest.raises(ValueError, match='at least 2 image-caption pairs'):
        model.forward_train(image[:1], text[:1])
    with pytest.raises(ValueError, match='one caption per image'):
        model.forward_train(image, text[:, None])


def test_forward_draws_one_uniform_tensor_the_size_of_the_logits():
    """The Gumbel noise is the forward's only random draw: one torch.rand_like on the [B, B, 4h, 4w] logits."""
    model = build_tiny('tcl').train()
    image, text = torch.randn(3, 3, 32, 48), captions(model)
    torch.manual_seed(3)
    model.forward_train(image, text)
    after_forward = torch.rand(5)
    torch.manual_seed(3)
    torch.rand(3, 3, 4 * 4, 4 * 6)
    assert torch.equal(after_forward, torch.rand(5))


def test_straight_through_hard_mask_follows_the_noise():
    from models.tcl.modules import gumbel_sigmoid_hard
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    torch.manual_seed(0)
    hard = gumbel_sigmoid_hard(logits, tau=0.5)
    torch.manual_seed(0)
    u = torch.rand_like(logits)
    soft = torch.sigmoid((logits + torch.log(u / (1 - u))) / 0.5)
    assert torch.equal(hard.detach(), (soft > 0.5).float())
    hard.sum().backward()
    torch.testing.assert_close(logits.grad, (soft * (1 - soft) / 0.5).detach())


# ----- training phases -----------------------------------------------------------------------------------------------
def trained_names(model, step):
    model.zero_grad(set_to_none=True)
    model.begin_step(step)
    torch.manual_seed(0)
    sum(model.forward_train(torch.randn(2, 3, 32, 32), captions(model, 2)).values()).backward()
    return {n for n, p in model.named_parameters() if p.grad is not None}


def test_ust_phase_trains_the_decoder_head_only():
    from utils.optim import build_optimizer
    model = build_model(tiny_model_cfg('tcl', ust_steps=3)).train()
    cfg = load_config(str(ROOT / 'configs' / 'tcl.yml'))
    optimizer = build_optimizer(cfg.train, model, 1e-3)  # built before the first begin_step, as the trainer does
    in_optimizer = {n for g in optimizer.param_groups for n in g['names']}
    assert in_optimizer == {n for n, _ in model.named_parameters() if n.startswith(('masker.', 'tcl'))}
    no_decay = set(optimizer.param_groups[1]['names'])
    assert 'masker.sim2mask.w' not in no_decay  # 0-d: decayed, as published
    assert 'masker.image_encoder.decoder.decoder.net.0.conv.conv.bias' in no_decay
    head = {n for n, _ in model.named_parameters()
            if n.startswith(('masker.image_encoder.decoder.', 'masker.sim2mask.')) or n in TEMPERATURES}
    backbone = {n for n, _ in model.named_parameters() if n.startswith('masker.image_encoder.backbone.')}
    assert head and backbone
    for step in (0, 2):
        assert trained_names(model, step) == head
    for step in (3, 10):
        assert trained_names(model, step) == head | backbone


# ----- the step schedule -----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings('ignore:Detected call of')
def test_step_schedule_equals_the_published_linear_then_cosine():
    """configs/tcl.yml's schedule (warmup_prefix) against torch's LinearLR(1e-4) + CosineAnnealingLR, scaled."""
    from utils.scheduler import build_scheduler, scale_lr
    cfg = load_config(str(ROOT / 'configs' / 'tcl.yml'))
    cfg.train.epochs, cfg.train.warmup_epochs = 10, 3  # 10 epochs of 4 steps: 40 steps, 12 of warm-up
    lrs = scale_lr(cfg.train, 64, 16)
    assert lrs.base_lr == pytest.approx(3e-4 * 1024 / 4096) and lrs.min_lr == pytest.approx(4e-5 * 1024 / 4096)
    param = torch.nn.Parameter(torch.zeros(1))
    ours_opt = torch.optim.AdamW([param], lr=lrs.base_lr)
    scheduler = build_scheduler(cfg.train, ours_opt, lrs, updates_per_epoch=4)
    published_opt = torch.optim.AdamW([param], lr=lrs.base_lr)
    warmup = torch.optim.lr_scheduler.LinearLR(published_opt, start_factor=1e-4, end_factor=1.0, total_iters=12)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(published_opt, T_max=40 - 12, eta_min=lrs.min_lr)
    published = torch.optim.lr_scheduler.SequentialLR(published_opt, [warmup, cosine], milestones=[12])
    ours, theirs = [], []
    for step in range(40):
        scheduler.step_update(step)
        ours.append(ours_opt.param_groups[0]['lr'])
        theirs.append(published_opt.param_groups[0]['lr'])
        published.step()
    assert ours[0] == pytest.approx(1e-4 * lrs.base_lr) and ours[12] == pytest.approx(lrs.base_lr)
    assert ours == pytest.approx(theirs, rel=1e-6)
    default = load_config(str(ROOT / 'configs' / 'default.yml'))
    default.train.epochs, default.train.warmup_epochs = 10, 3
    scheduler = build_scheduler(default.train, ours_opt, lrs, updates_per_epoch=4)
    scheduler.step_update(12)
    assert ours_opt.param_groups[0]['lr'] < 0.9 * lrs.base_lr  # without warmup_prefix the cosine counts the warm-up


def test_zero_shot_logits_equal_the_published_per_crop_computation():
    """Ours (shifted views for PAMR, crops batched) against models/tcl/reference.py (the published conv kernels,
    one crop at a time) on the same weights."""
    from models.tcl.reference import published_crop_logits, published_pamr
    model = build_tiny('tcl').eval()
    text = class_embedding(model)
    crops = torch.randn(2, 3, 37, 50, generator=torch.Generator().manual_seed(2))
    ours = model.zero_shot_logits(crops, text, True, 0.4, pamr=True, kp_w=0.3)
    for i in range(2):
        published = published_crop_logits(model, crops[i:i + 1], text, True, 0.4, pamr=True, kp_w=0.3)
        torch.testing.assert_close(ours[i:i + 1], published, rtol=1e-5, atol=1e-6)
    image, mask = torch.rand(1, 3, 20, 28), torch.rand(1, 3, 20, 28)
    torch.testing.assert_close(PAMR(10, (1, 2, 4, 8, 12, 24))(image, mask), published_pamr(image, mask))
    with pytest.raises(ValueError, match='one crop at a time'):
        published_crop_logits(model, crops, text, True, 0.4)


def test_benchmark_row_against_the_published_computation():
    from benchmarks.report import flatten_headline, format_table
    from benchmarks.run import machine
    from benchmarks.tcl_bench import tcl_crop_comparison
    result = tcl_crop_comparison(torch.device('cpu'), repeats=1, warmup=0, clock='process', crop=64, quick=True)
    assert result['crop']['max_abs_diff'] < 1e-5 and result['crop']['label_mismatch'] == 0
    assert result['crop']['pixels'] == 64 * 64 and result['crop']['ours_s'] > 0
    results = {'sections': {'seg_tcl': result}, 'machine': machine(torch.device('cpu')),
               'settings': dict(device='cpu', batch=1, repeats=1, warmup=0, clock='process', quick=True),
               'total_wall_s': 1.0}
    headline = flatten_headline(results)
    assert headline['tcl_seg_crop_logits_max_abs_diff_vs_published'] == result['crop']['max_abs_diff']
    assert 'TCL per crop, ours vs the published computation' in format_table({**results, **headline})
