"""CompactZeroShotSegmentor: the dense segmentor's logits bit for bit and its labels at the original size, for
hundreds of classes, in memory that does not hold [classes, H, W]."""
import pytest
import torch
import torch.nn.functional as F
from mmengine.config import Config
from mmseg.structures import SegDataSample

import segmentation  # noqa: F401
from benchmarks.timing import peak_memory_mib
from segmentation.evaluation import ZeroShotSegmentor
from segmentation.evaluation.compact import (CompactLogits, CompactZeroShotSegmentor, GroupCombinations,
                                            build_zero_shot_segmentor, labels_at_size)
from segmentation.evaluation.resize import compact_winning_candidates, resized_argmax, winning_candidates
from test_seg_zero_shot import tiny_model

BASE_CFG = 'segmentation/configs/_base_/zero_shot.py'


def protocol(**overrides):
    cfg = Config.fromfile(BASE_CFG).test_cfg
    cfg.update(crop_size=(64, 64), stride=(32, 32), bg_thresh=0.5)
    cfg.update(overrides)
    return cfg


def metas(h, w):
    return [dict(ori_shape=(h, w), img_shape=(h, w), pad_shape=(h, w), padding_size=[0, 0, 0, 0])]


def sample(size, input_hw, padding=(0, 0, 0, 0)):
    return SegDataSample(metainfo=dict(ori_shape=size, img_shape=input_hw, padding_size=list(padding)))


@pytest.fixture(scope='module')
def text():
    torch.manual_seed(3)
    return F.normalize(torch.randn(150, 16), dim=-1)


@pytest.fixture(scope='module')
def models():
    return {kind: tiny_model(kind=kind) for kind in ('GroupViT', 'PGSeg')}


@pytest.mark.parametrize('kind, with_bg, overrides', [
    ('GroupViT', True, {}), ('PGSeg', True, {}), ('GroupViT', True, dict(bg_rule='tcl', bg_thresh=0.02)),
    ('PGSeg', False, {}), ('GroupViT', True, dict(crop_batch=1)), ('GroupViT', True, dict(mode='whole')),
    ('GroupViT', True, dict(top_k=150))],
    ids=['groupvit-bg', 'pgseg-bg', 'tcl-bg', 'no-bg', 'crop-by-crop', 'whole', 'top-all'])
def test_logits_and_labels_equal_the_dense_path(models, text, kind, with_bg, overrides):
    model, cfg = models[kind], protocol(**overrides)
    dense = ZeroShotSegmentor(model, text, with_bg, cfg).eval()
    compact = CompactZeroShotSegmentor(model, text, with_bg, cfg).eval()
    img = torch.randn(1, 3, 80, 130, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = dense.inference(img, metas(80, 130))[0]
        logits = compact.inference(img, metas(80, 130))
    assert isinstance(logits, CompactLogits) and logits.shape == tuple(expected.shape) == (150 + with_bg, 80, 130)
    assert torch.equal(logits.dense(), expected)  # the same float operations, element for element
    assert len(logits.table) < 80 * 130 // 20  # one row per group combination, not per pixel
    for size in [(250, 400), (81, 131), (40, 33)]:
        labels = compact.postprocess_result(logits, [sample(size, (80, 130))])[0].pred_sem_seg.data
        assert torch.equal(labels, resized_argmax(expected, size))
        full = F.interpolate(expected[None], size=size, mode='bilinear', align_corners=False)[0].argmax(0, True)
        assert torch.equal(labels, full)
    assert torch.equal(compact.postprocess_result(logits)[0].pred_sem_seg.data, expected.argmax(0, True))


def test_padding_is_cut_before_the_resize(text):
    model = tiny_model()
    compact = CompactZeroShotSegmentor(model, text, True, protocol()).eval()
    img = torch.randn(1, 3, 70, 100, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = compact.inference(img, metas(70, 100))
    dense = logits.dense()[:, 3:70 - 5, 2:100 - 7]  # left 2, right 7, top 3, bottom 5
    labels = compact.postprocess_result(logits, [sample((300, 500), (70, 100), (2, 7, 3, 5))])[0].pred_sem_seg.data
    assert torch.equal(labels, resized_argmax(dense, (300, 500)))


def test_test_cfg_picks_the_segmentor_and_labels_at_size_takes_either_logits(text):
    model = tiny_model()
    compact = build_zero_shot_segmentor(model, text, True, protocol(compact_logits=True)).eval()
    dense = build_zero_shot_segmentor(model, text, True, protocol()).eval()
    assert type(compact) is CompactZeroShotSegmentor and type(dense) is ZeroShotSegmentor
    img = torch.randn(1, 3, 64, 90, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        from_compact = labels_at_size(compact.inference(img, metas(64, 90)), (200, 281))
        dense_logits = dense.inference(img, metas(64, 90))  # [1, C, h, w]
    assert from_compact.shape == (1, 200, 281) and torch.equal(from_compact, labels_at_size(dense_logits, (200, 281)))
    assert torch.equal(from_compact, labels_at_size(dense_logits[0], (200, 281)))
    with pytest.raises(ValueError, match='one image, got a batch of 2'):
        labels_at_size(dense_logits.expand(2, -1, -1, -1), (200, 281))


def test_candidates_equal_those_of_the_dense_logits():
    """Blocky logits with ties and a class that only wins between pixels, as a table and a code map."""
    g = torch.Generator().manual_seed(2)
    table = torch.rand(12, 9, generator=g)
    table[3] = table[5]  # two group combinations with the same row
    table[:, 4] = table[:, 7]  # two classes tied everywhere
    table[0] = torch.tensor([1.0, 0.0, 0.7, 0, 0, 0, 0, 0, 0])
    table[1] = torch.tensor([0.0, 1.0, 0.7, 0, 0, 0, 0, 0, 0])
    code = F.interpolate(torch.randint(0, 12, (1, 1, 6, 8), generator=g).float(), size=(30, 41))[0, 0].long()
    code[0, :2] = torch.tensor([0, 1])
    dense = table[code].permute(2, 0, 1)
    assert torch.equal(compact_winning_candidates(code, table), winning_candidates(dense))


def test_rows_are_summed_in_window_order_and_divided_by_the_window_count():
    combos = GroupCombinations(2, 4, num_classes=3, device='cpu', dtype=torch.float32)
    rows_a, rows_b = torch.tensor([[1., 0, 0], [0, 1, 0]]), torch.tensor([[0., 0, 4], [2, 2, 2]])
    combos.add((0, 2, 0, 3), torch.tensor([[0, 0, 1], [0, 1, 1]]), rows_a)
    combos.add((0, 2, 1, 4), torch.tensor([[0, 1, 1], [0, 0, 1]]), rows_b)
    logits = combos.mean()
    expected = torch.zeros(3, 2, 4)
    expected[:, 0] = torch.stack([rows_a[0], (rows_a[0] + rows_b[0]) / 2, (rows_a[1] + rows_b[1]) / 2, rows_b[1]], 1)
    expected[:, 1] = torch.stack([rows_a[0], (rows_a[1] + rows_b[0]) / 2, (rows_a[1] + rows_b[0]) / 2, rows_b[1]], 1)
    assert torch.equal(logits.dense(), expected)
    assert len(logits.table) == 5  # the distinct (group in window 1, group in window 2) combinations


def test_pamr_is_refused(text):
    with pytest.raises(ValueError, match='pamr=False'):
        CompactZeroShotSegmentor(tiny_model(), text, True, protocol(pamr=True))


def test_919_classes_on_a_3000x4000_original_stay_small():
    """ImageNet-S919 sizes: a 448x597 input (2 windows of 448) and labels at 3000x4000. The dense path holds the
    crop logits [2, 920, 448, 448] (1.4 GiB) and the accumulator [920, 448, 597] (0.9 GiB); the compact one a
    few group rows and one resized chunk of candidate classes."""
    model = tiny_model()
    text = F.normalize(torch.randn(919, 16, generator=torch.Generator().manual_seed(4)), dim=-1)
    segmentor = CompactZeroShotSegmentor(model, text, True, protocol(crop_size=(448, 448), stride=(224, 224))).eval()
    img = torch.randn(1, 3, 448, 597, generator=torch.Generator().manual_seed(5))
    out = []

    def predict():
        with torch.no_grad():
            out.append(segmentor.predict(img, [sample((3000, 4000), (448, 597))])[0].pred_sem_seg.data)

    peak = peak_memory_mib(predict, 'cpu')
    dense_crop_logits_mib = 2 * 920 * 448 * 448 * 4 / 2**20
    assert out[0].shape == (1, 3000, 4000) and out[0].max() < 920
    assert peak < 700 < dense_crop_logits_mib, peak
