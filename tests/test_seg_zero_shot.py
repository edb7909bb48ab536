"""Per-crop zero-shot logits against a direct computation and the published two-pass protocol; the segmentor's
sliding window against whole-image inference and against mmseg's own sliding window."""
import math
import types

import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.structures import SegDataSample

import segmentation  # noqa: F401
from conftest import tiny_model_cfg
from models import build_model
from models.groupvit.reference import published_protocol_logits
from segmentation.evaluation import ZeroShotSegmentor, zero_shot_logits

BASE_CFG = 'segmentation/configs/_base_/zero_shot.py'


def tiny_model(seed=1, kind='GroupViT'):
    """The tiny GroupViT / PGSeg of tests/configs at 64 px, its image weights widened so that several final groups
    own pixels."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_cfg(kind.lower(), **{'img_encoder.img_size': 64})).eval()
    with torch.no_grad():
        for weight in model.img_encoder.parameters():
            if weight.dim() >= 2:
                weight.normal_(0, 2 / weight[0].numel()**0.5)
    return model


@pytest.fixture(scope='module')
def model():
    return tiny_model()


@pytest.fixture(scope='module')
def text():
    torch.manual_seed(1)
    return F.normalize(torch.randn(7, 16), dim=-1)


def direct_logits(model, img, text, bg_thresh, top_k=5):
    """Straight from the model's outputs, written out: [N+1, H, W] (float64 arithmetic)."""
    H, W = img.shape[-2:]
    with torch.no_grad():
        enc = model.img_encoder(img, return_attn=True, return_feat=True, as_dict=True)
        groups = model.img_projector(enc['feat'])[0].double()
        pooled = model.img_projector(enc['x'])[0].double()
    soft1 = enc['attn_dicts'][0]['soft'][0, 0].double()  # [G1, N]
    soft2 = enc['attn_dicts'][1]['soft'][0, 0].double()  # [G2, G1]
    assignment = torch.einsum('an,ba->bn', soft1, soft2)  # [G2, N]: patch n -> final group b
    grid = assignment.view(1, -1, H // 8, W // 8)
    pixel_group = F.interpolate(grid, size=(H, W), mode='bilinear', align_corners=False)[0].argmax(0)

    scale = min(model.logit_scale.exp().item(), 100.0)
    cos = F.normalize(groups, dim=-1) @ text.double().T  # [G, N]
    cos_img = F.normalize(pooled, dim=-1) @ text.double().T  # [N]
    top = set(torch.softmax(scale * cos_img, 0).topk(top_k).indices.tolist())
    affinity = torch.zeros_like(cos)
    for g in range(cos.shape[0]):
        e = torch.exp(scale * cos[g])
        for n in range(cos.shape[1]):
            restricted = e[n] / sum(e[k] for k in top) if n in top else 0.0
            affinity[g, n] = restricted * e[n] / e.sum()
    fg = affinity[pixel_group].permute(2, 0, 1)  # [N, H, W]
    bg = (fg.max(0).values < min(bg_thresh, affinity.max().item())).double()
    return torch.cat([bg[None], fg]), affinity, pixel_group


def test_logits_equal_direct_computation(model, text):
    img = torch.randn(1, 3, 64, 64)
    _, affinity, pixel_group = direct_logits(model, img, text, 1.0)
    present = sorted({affinity[g].max().item() for g in pixel_group.unique().tolist()})
    assert len(present) >= 2, 'the test needs two groups with different peak affinities'
    thresh = (present[0] + present[1]) / 2  # away from any pixel's value: no rounding-dependent decisions
    expected, _, _ = direct_logits(model, img, text, thresh)
    with torch.no_grad():
        logits = zero_shot_logits(model, img, text, True, thresh)[0]
    assert logits.shape == (8, 64, 64)
    torch.testing.assert_close(logits[1:].double(), expected[1:], rtol=1e-5, atol=1e-6)
    assert torch.equal(logits[0].double(), expected[0])
    assert 0 < expected[0].mean() < 1  # both background and foreground pixels
    with torch.no_grad():
        no_bg = zero_shot_logits(model, img, text, False, thresh)
    assert torch.equal(no_bg[0], logits[1:])


@pytest.mark.parametrize('shape', [(64, 64), (64, 40), (48, 64), (37, 53)])
@pytest.mark.parametrize('with_bg,bg_thresh', [(True, 0.95), (True, 0.2), (False, 0.95)])
def test_equals_published_protocol_bit_for_bit(model, text, shape, with_bg, bg_thresh):
    torch.manual_seed(2)
    img = torch.randn(1, 3, *shape)
    with torch.no_grad():
        ours = zero_shot_logits(model, img, text, with_bg, bg_thresh)
    assert torch.equal(ours, published_protocol_logits(model, img, text, with_bg, bg_thresh))


@pytest.mark.parametrize('with_bg', [True, False])
def test_pgseg_equals_published_protocol_bit_for_bit(text, with_bg):
    model = tiny_model(kind='PGSeg')
    img = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        ours = zero_shot_logits(model, img, text, with_bg, 0.6)
    assert torch.equal(ours, published_protocol_logits(model, img, text, with_bg, 0.6))


def test_encoder_runs_once_per_batch_of_crops(model, text):
    calls = []
    hook = model.img_encoder.register_forward_hook(lambda *args: calls.append(1))
    try:
        with torch.no_grad():
            zero_shot_logits(model, torch.randn(3, 3, 64, 64), text, True, 0.9)
            assert len(calls) == 1
            published_protocol_logits(model, torch.randn(1, 3, 64, 64), text, True, 0.9)
            assert len(calls) == 3
    finally:
        hook.remove()


def test_batched_crops_equal_single_crops():
    model = tiny_model().double()
    text = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    crops = torch.randn(3, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        batched = zero_shot_logits(model, crops, text, True, 0.5)
        single = torch.cat([zero_shot_logits(model, c[None], text, True, 0.5) for c in crops])
    torch.testing.assert_close(batched, single, rtol=0, atol=1e-12)
    assert torch.equal(batched.argmax(1), single.argmax(1))


def segmentor(model, text, **test_cfg):
    cfg = Config.fromfile(BASE_CFG).test_cfg
    cfg.update(test_cfg)
    return ZeroShotSegmentor(model, text, True, cfg).eval()


def metas(h, w):
    return [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])]


def test_slide_equals_whole_when_image_is_one_crop(model, text):
    img = torch.randn(1, 3, 64, 64)
    slide = segmentor(model, text, mode='slide', crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5)
    whole = segmentor(model, text, mode='whole', bg_thresh=0.5)
    with torch.no_grad():
        a, b = slide.inference(img, metas(64, 64)), whole.inference(img, metas(64, 64))
        direct = zero_shot_logits(model, img, text, True, 0.5)
    assert torch.equal(a, b) and torch.equal(a, direct)
    pa = slide.predict(img, None)[0].pred_sem_seg.data
    assert torch.equal(pa, whole.predict(img, None)[0].pred_sem_seg.data)


def test_batched_slide_equals_mmseg_slide():
    model = tiny_model().double()
    text = F.normalize(torch.randn(7, 16, dtype=torch.float64), dim=-1)
    img = torch.randn(1, 3, 96, 136, dtype=torch.float64)
    kwargs = dict(mode='slide', crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5)
    ours = segmentor(model, text, crop_batch=4, **kwargs)
    mmseg_loop = segmentor(model, text, crop_batch=1, **kwargs)  # EncoderDecoder.slide_inference, crop by crop
    with torch.no_grad():
        a, b = ours.inference(img, metas(96, 136)), mmseg_loop.inference(img, metas(96, 136))
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(a.argmax(1), b.argmax(1))
    assert a.shape == (1, 8, 96, 136)


def test_tcl_background_rule_and_pamr(model, text):
    img = torch.randn(1, 3, 64, 64)
    tcl = segmentor(model, text, mode='whole', bg_rule='tcl', bg_thresh=0.4)
    tcl_pamr = segmentor(model, text, mode='whole', bg_rule='tcl', bg_thresh=0.4, pamr=True)
    with torch.no_grad():
        plain = tcl.encode_decode(img)
        refined = tcl_pamr.encode_decode(img)
        fg = zero_shot_logits(model, img, text, False, 0.0)
    assert torch.equal(plain[:, 0], torch.full_like(plain[:, 0], 0.4))
    assert torch.equal(plain[:, 1:], fg)
    assert refined.shape == plain.shape and torch.equal(refined[:, 0], plain[:, 0])
    assert not torch.allclose(refined[:, 1:], fg)
    with pytest.raises(ValueError, match='bg_rule'), torch.no_grad():
        segmentor(model, text, bg_rule='other').encode_decode(img)


def test_bfloat16_precision_runs_the_encoder_under_autocast(model, text):
    """The encoder's matrix products run in bfloat16; the class scores and everything after stay float32."""
    img = torch.randn(1, 3, 64, 96)
    linear = next(m for m in model.img_encoder.modules() if isinstance(m, torch.nn.Linear))
    dtypes = []
    hook = linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    try:
        with torch.no_grad():
            exact = segmentor(model, text, crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5).inference(
                img, metas(64, 96))
            calls = len(dtypes)
            fast = segmentor(model, text, crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5,
                             precision='bfloat16').inference(img, metas(64, 96))
    finally:
        hook.remove()
    assert set(dtypes[:calls]) == {torch.float32} and set(dtypes[calls:]) == {torch.bfloat16}
    assert fast.dtype == torch.float32 and fast.shape == exact.shape and not torch.equal(fast, exact)
    with pytest.raises(ValueError, match="test_cfg.precision must be one of .*got 'fp8'"):
        segmentor(model, text, precision='fp8')


def test_pgseg_aeroplane_prompt_tokenizes_like_aeroplane():
    from datasets import tokenize
    assert torch.equal(tokenize(['a photo of a aeroplane .']), tokenize(['a photo of a aeroplane.']))


def test_huge_original_image_is_resized_a_few_classes_at_a_time(model, text, monkeypatch):
    """A 4000x3000 original: the full-size logits (8 x 12M floats) are never materialised at once."""
    from segmentation.evaluation import resize as module
    sizes = []

    def interpolate(x, *args, **kwargs):
        out = F.interpolate(x, *args, **kwargs)
        sizes.append(out.numel() * out.element_size())
        return out

    monkeypatch.setattr(module, 'F', types.SimpleNamespace(interpolate=interpolate))
    monkeypatch.setattr(module, 'RESIZE_CHUNK_BYTES', 3 * 4000 * 3000 * 4)
    seg = segmentor(model, text, mode='slide', crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5, crop_batch=16)
    img = torch.randn(1, 3, 64, 85)  # the keep-ratio resized input
    sample = SegDataSample(metainfo=dict(ori_shape=(3000, 4000), img_shape=(64, 85), padding_size=[0, 0, 0, 0]))
    with torch.no_grad():
        pred = seg.predict(img, [sample])[0].pred_sem_seg.data
        logits = seg.inference(img, metas(64, 85))
    assert pred.shape == (1, 3000, 4000)
    candidates = len(module.winning_candidates(logits[0]))  # of 8 classes; resized 3 at a time
    assert max(sizes) <= 3 * 4000 * 3000 * 4 and len(sizes) == math.ceil(candidates / 3)
    full = F.interpolate(logits, size=(3000, 4000), mode='bilinear', align_corners=False)[0].argmax(0, True)
    assert torch.equal(pred, full)
