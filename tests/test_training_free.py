"""Training-free CLIP methods on a tiny random CLIP: each last-block variant against a hand computation, NACLIP's
Gaussian bias, the per-crop cosine maps (ClearCLIP's padding), text embeddings, and the full-image rule (multi-name
classes, area_thd, prob_thd, whole image vs sliding windows, PAMR)."""
import copy
import functools
import math

import pytest
import torch
import torch.nn.functional as F

from models import build_model
from models.training_free import TRAINING_FREE_METHODS, gaussian_neighbourhood
from reference_weights import openai_like_state_dict
from models.pamr import PAMR
from segmentation.evaluation import slide_windows, training_free_postprocess, training_free_predict
from utils.config import load_config

METHODS = ('maskclip', 'sclip', 'clearclip', 'naclip')


@functools.lru_cache()
def tiny_float64(method):
    model = build_model(load_config(f'tests/configs/{method}.yml').model)
    model.clip.load_state_dict(openai_like_state_dict(model.clip.state_dict(), seed=0))
    return model.double().eval()


def tiny(method, dtype=torch.float64):
    """The method of tests/configs/<method>.yml with seeded weights (a fresh copy)."""
    return copy.deepcopy(tiny_float64(method)).to(dtype)


def unit_rows(n, dim=32, seed=1, dtype=torch.float64):
    rows = torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return rows / rows.norm(dim=-1, keepdim=True)


def image(h, w, seed=2, dtype=torch.float64):
    return torch.randn(1, 3, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def layer_norm(x, ln):
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def softmax(a):
    e = torch.exp(a - a.max(-1, keepdim=True).values)
    return e / e.sum(-1, keepdim=True)


def hand_last_block(method, block, x, grid, std=5.0):
    """x: [L, B, C] -> [L, B, C], written from the papers' equations with per-head einsums."""
    attn = block.attn
    heads, C = attn.num_heads, x.shape[-1]
    d = C // heads
    qkv = layer_norm(x, block.ln_1) @ attn.in_proj_weight.T + attn.in_proj_bias
    q, k, v = (t.unflatten(-1, (heads, d)) for t in qkv.split(C, dim=-1))  # [L, B, h, d]
    sim = {n: torch.einsum('lbhd,mbhd->bhlm', t, t) / math.sqrt(d) for n, t in (('q', q), ('k', k))}
    if method == 'maskclip':
        weights = torch.eye(x.shape[0], dtype=x.dtype).expand(x.shape[1], heads, -1, -1)
    elif method == 'sclip':
        weights = softmax(sim['q']) + softmax(sim['k'])
    elif method == 'clearclip':
        weights = softmax(sim['q'])
    else:
        weights = softmax(sim['k'] + hand_omega(grid, std).float().to(x.dtype))  # NACLIP builds it in float32
    out = torch.einsum('bhlm,mbhd->lbhd', weights, v).flatten(2) @ attn.out_proj.weight.T + attn.out_proj.bias
    if method in ('clearclip', 'naclip'):
        return out
    y = x + out
    hidden = layer_norm(y, block.ln_2) @ block.mlp.c_fc.weight.T + block.mlp.c_fc.bias
    hidden = hidden * torch.sigmoid(1.702 * hidden)
    return y + hidden @ block.mlp.c_proj.weight.T + block.mlp.c_proj.bias


def hand_omega(grid, std):
    h, w = grid
    omega = torch.zeros(1 + h * w, 1 + h * w, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            for r2 in range(h):
                for c2 in range(w):
                    omega[1 + r * w + c, 1 + r2 * w + c2] = math.exp(-((r - r2) ** 2 + (c - c2) ** 2) / (2 * std ** 2))
    return omega


@pytest.mark.parametrize('method', METHODS)
def test_last_block_and_cosine_maps_by_hand(method):
    model = tiny(method)
    assert type(model) is TRAINING_FREE_METHODS[method]
    img, text = image(48, 80), unit_rows(5)
    visual = model.clip.visual
    with torch.no_grad():
        x = visual.tokens_before_last_block(img)
        assert x.shape == (1 + 3 * 5, 1, 128)
        y = hand_last_block(method, visual.transformer.resblocks[-1], x, (3, 5))
        features = layer_norm(y[1:, 0], visual.ln_post) @ visual.proj  # patch tokens, row-major
        cosine = (features / features.norm(dim=-1, keepdim=True)) @ text.T  # [15, Q]
        maps = model.patch_logits(img, text)
    assert maps.shape == (1, 5, 3, 5)
    for r in range(3):
        for c in range(5):
            assert torch.allclose(maps[0, :, r, c], cosine[r * 5 + c], atol=1e-12, rtol=0)
    # the variants really differ, and from vanilla CLIP's own last block
    with torch.no_grad():
        vanilla = visual.transformer.resblocks[-1](x, None)
        others = {m: hand_last_block(m, visual.transformer.resblocks[-1], x, (3, 5)) for m in METHODS if m != method}
    assert all((y - other).abs().max() > 1e-3 for other in [vanilla, *others.values()])


def test_gaussian_neighbourhood():
    for grid, std in (((3, 4), 5.0), ((2, 5), 2.0), ((1, 1), 1.0)):
        omega = gaussian_neighbourhood(grid, std)
        assert omega.dtype == torch.float32 and omega.shape == (1 + grid[0] * grid[1],) * 2
        assert torch.allclose(omega.double(), hand_omega(grid, std), atol=1e-7, rtol=0)
        assert torch.all(omega[0] == 0) and torch.all(omega[:, 0] == 0)
        assert torch.all(omega[1:, 1:].diagonal() == 1)
    # NACLIP caches one bias per grid and uses it in the run's dtype
    model = tiny('naclip')
    with torch.no_grad():
        model.patch_logits(image(48, 80), unit_rows(2))
    assert set(model._omega) == {(3, 5)}


@pytest.mark.parametrize('method', METHODS)
def test_crop_logits_resize_and_padding(method):
    """A 40x56 crop: SCLIP / NACLIP use the 2x3 patches that fit and resize to the crop; ClearCLIP and MaskCLIP pad
    (zeros, centred) to 48x64, resize to that and cut the crop back out."""
    model, img, text = tiny(method), image(40, 56), unit_rows(4)
    with torch.no_grad():
        out = model.zero_shot_logits(img, text)
        if method in ('clearclip', 'maskclip'):
            padded = F.pad(img, (4, 4, 4, 4))
            expected = F.interpolate(model.patch_logits(padded, text), size=(48, 64), mode='bilinear',
                                     align_corners=False)[:, :, 4:44, 4:60]
        else:
            expected = F.interpolate(model.patch_logits(img, text), size=(40, 56), mode='bilinear',
                                     align_corners=False)
            assert model.patch_logits(img, text).shape[-2:] == (2, 3)
        with_bg = model.zero_shot_logits(img, text, with_bg=True, bg_thresh=0.25)
    assert out.shape == (1, 4, 40, 56) and torch.equal(out, expected)
    assert with_bg.shape == (1, 5, 40, 56) and torch.all(with_bg[:, 0] == 0.25) and torch.equal(with_bg[:, 1:], out)


def test_batches_and_float32():
    model = tiny('sclip', torch.float32)
    imgs = torch.cat([image(64, 64, seed=s, dtype=torch.float32) for s in (3, 4)])
    text = unit_rows(3, dtype=torch.float32)
    with torch.no_grad():
        both = model.zero_shot_logits(imgs, text)
        one = model.zero_shot_logits(imgs[1:], text)
        assert model.encode_image(imgs).shape == (2, 32)
    assert both.dtype == torch.float32 and torch.allclose(both[1:], one, atol=1e-6)


def test_text_embedding_normalises_each_prompt_first():
    model = tiny('clearclip')
    tokens = torch.zeros(2, 3, model.context_length, dtype=torch.long)
    tokens[:, :, 0], tokens[:, :, 4] = 49406, 49407
    tokens[:, :, 1:4] = torch.randint(300, 40000, (2, 3, 3), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embedding = model.build_text_embedding(tokens)
        prompts = torch.stack([model.encode_text(tokens[i]) for i in range(2)])  # [2, 3, C]
    unit = prompts / prompts.norm(dim=-1, keepdim=True)
    expected = unit.mean(1) / unit.mean(1).norm(dim=-1, keepdim=True)
    assert torch.allclose(embedding, expected, atol=1e-14)
    plain_mean = prompts.mean(1) / prompts.mean(1).norm(dim=-1, keepdim=True)
    assert (plain_mean - expected).abs().max() > 1e-4  # the order of normalising matters here


def hand_rule(logits, query_idx, logit_scale, prob_thd, area_thd, renormalise=False):
    """The full-image rule written pixel by pixel."""
    Q, H, W = logits.shape
    K = max(query_idx) + 1
    scores = torch.zeros(K, H, W, dtype=logits.dtype)
    pred = torch.zeros(H, W, dtype=torch.long)
    for i in range(H):
        for j in range(W):
            e = [math.exp(logit_scale * logits[q, i, j].item()) for q in range(Q)]
            probs = [v / sum(e) for v in e]
            for k in range(K):
                scores[k, i, j] = max(p for p, c in zip(probs, query_idx) if c == k) if Q != K else probs[k]
    if area_thd is not None:
        winners = scores.argmax(0)
        areas = [(winners == k).sum().item() for k in range(K)]
        foreground = sum(areas[1:])
        for k in range(1, K):
            if areas[k] <= area_thd * foreground:
                scores[k] = 0
    for i in range(H):
        for j in range(W):
            best = scores[:, i, j].max().item()
            pred[i, j] = 0 if best < prob_thd else int(scores[:, i, j].argmax())
    if renormalise:
        scores = scores / scores.sum(0, keepdim=True)
    return scores, pred


def rule_logits():
    """6 query names for 4 classes (class 0 and 2 have two names); class 3 wins a small corner only."""
    gen = torch.Generator().manual_seed(5)
    logits = 0.02 * torch.randn(6, 7, 9, generator=gen, dtype=torch.float64)
    logits[2, :, :5] += 0.05       # class 1 (name 2) wins the left
    logits[4, :, 5:] += 0.05       # class 2 (name 4) wins the right...
    logits[3, :3, 5:] += 0.08      # ...its other name wins the top right harder
    logits[5, 6, 8] += 0.2         # class 3: one pixel
    logits[0, 3, 2] += 0.3         # class 0: one pixel, by its first name
    return logits, [0, 0, 1, 2, 2, 3]


@pytest.mark.parametrize('area_thd', [None, 0.1])
@pytest.mark.parametrize('prob_thd', [0.0, 0.5])
def test_full_image_rule_by_hand(area_thd, prob_thd):
    logits, query_idx = rule_logits()
    model = tiny('sclip')
    scores, pred = training_free_postprocess(model, logits, query_idx, 40, prob_thd, area_thd)
    expected_scores, expected_pred = hand_rule(logits, query_idx, 40, prob_thd, area_thd)
    assert scores.shape == (4, 7, 9) and torch.allclose(scores, expected_scores, atol=1e-12)
    assert torch.equal(pred, expected_pred)
    assert (pred == 3).any() == (area_thd is None)  # the one-pixel class goes under area_thd
    assert (pred == 0).any()
    if prob_thd:
        assert (expected_scores.max(0).values < prob_thd).any()


def test_naclip_renormalises_its_stored_probabilities():
    logits, query_idx = rule_logits()
    scores, pred = training_free_postprocess(tiny('naclip'), logits[None], query_idx, 40, 0.1, None)
    expected_scores, expected_pred = hand_rule(logits, query_idx, 40, 0.1, None, renormalise=True)
    assert torch.allclose(scores, expected_scores, atol=1e-12) and torch.equal(pred, expected_pred)
    assert torch.allclose(scores.sum(0), torch.ones(7, 9, dtype=torch.float64))


def test_one_name_per_class_uses_the_softmax_directly():
    logits, _ = rule_logits()
    scores, pred = training_free_postprocess(tiny('sclip'), logits[:4], [0, 1, 2, 3], 50, 0.0, None)
    assert torch.equal(scores, (logits[:4] * 50).softmax(0)) and torch.equal(pred, scores.argmax(0))


def test_sliding_windows_and_whole_image():
    """The windows' cosine maps summed / overlap count, resized to the original size; whole image: the patch grid
    resized directly (SCLIP, ClearCLIP) or first to the input size (NACLIP)."""
    img, text = image(80, 112), unit_rows(3)
    ori = (30, 41)
    for method in METHODS:
        model = tiny(method)
        with torch.no_grad():
            slide = training_free_predict(model, img, text, [0, 1, 2], ori, 64, 32, 40, 0.0, None, 0, None)
            whole = training_free_predict(model, img, text, [0, 1, 2], ori, None, None, 40, 0.0, None, 0, None)
            sums, count = torch.zeros(1, 3, 80, 112, dtype=img.dtype), torch.zeros(1, 1, 80, 112, dtype=img.dtype)
            windows = slide_windows(80, 112, (64, 64), (32, 32))
            assert len(windows) == 2 * 3
            for y1, y2, x1, x2 in windows:
                sums[:, :, y1:y2, x1:x2] += model.zero_shot_logits(img[:, :, y1:y2, x1:x2], text)
                count[:, :, y1:y2, x1:x2] += 1
            expected = F.interpolate(sums / count, size=ori, mode='bilinear', align_corners=False)[0]
            grid = model.patch_logits(img, text)
            via_input = F.interpolate(F.interpolate(grid, size=(80, 112), mode='bilinear', align_corners=False),
                                      size=ori, mode='bilinear', align_corners=False)[0]
            direct = F.interpolate(grid, size=ori, mode='bilinear', align_corners=False)[0]
            one_window = training_free_predict(model, img, text, [0, 1, 2], ori, 128, 64, 40, 0.0, None, 0, None)
        assert torch.allclose(slide['logits'], expected, atol=1e-14)
        assert torch.equal(whole['logits'], via_input if method == 'naclip' else direct)
        assert (direct - via_input).abs().max() > 1e-4
        assert slide['scores'].shape == (3, *ori) and slide['pred'].shape == ori and slide['pred'].dtype == torch.long
        if method == 'naclip':  # one window over the whole image is the whole-image path
            assert torch.allclose(one_window['logits'], whole['logits'], atol=1e-14)


def test_pamr_at_the_original_size():
    img, text = image(64, 96), unit_rows(3)
    model = tiny('naclip')
    ori = (24, 36)
    with torch.no_grad():
        plain = training_free_predict(model, img, text, [0, 1, 2], ori, None, None, 40, 0.0, None, 0, (8, 16))
        refined = training_free_predict(model, img, text, [0, 1, 2], ori, None, None, 40, 0.0, None, 3, (1, 2))
    small = F.interpolate(img, size=ori, mode='bilinear', align_corners=False)
    expected = PAMR(3, (1, 2))(small, plain['logits'][None])[0]
    assert torch.allclose(refined['logits'], expected, atol=1e-14)
    assert (refined['logits'] - plain['logits']).abs().max() > 1e-6


def test_bad_inputs():
    model = tiny('sclip')
    with pytest.raises(ValueError, match='one image'):
        training_free_predict(model, image(64, 64).repeat(2, 1, 1, 1), unit_rows(2), [0, 1], (8, 8), None, None,
                              40, 0.0, None, 0, None)
    with pytest.raises(ValueError, match='query_idx has 3 entries for 2'):
        training_free_postprocess(model, torch.zeros(2, 4, 4), [0, 1, 1], 40, 0.0, None)
    with pytest.raises(ValueError, match='smaller than one 16-pixel patch'):
        model.zero_shot_logits(image(8, 64), unit_rows(2))
    with pytest.raises(ValueError, match='gaussian_std must be positive'):
        build_model(dict(load_config('tests/configs/naclip.yml').model, gaussian_std=0))
