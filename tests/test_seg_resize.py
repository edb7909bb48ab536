"""Labels at the original size: arg-max of the resized logits, resizing only the classes that can win."""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.seg_bench import decoder_like_logits
from segmentation.evaluation import resize
from segmentation.evaluation.resize import resized_argmax, winning_candidates


def full_argmax(logits, size, align_corners=False):
    return F.interpolate(logits[None], size=size, mode='bilinear', align_corners=align_corners)[0].argmax(0, True)


@pytest.mark.parametrize('size, align_corners', [((40, 30), False), ((200, 310), False), ((200, 310), True),
                                                 ((5, 4), False), ((1, 13), False)])
def test_equals_arg_max_of_all_classes_resized(size, align_corners, monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(7, 9, 11)
    logits[3] = logits[5]  # exact ties: the first maximum wins, as in torch.argmax
    logits[6, 2:5, 3:8] = logits[:6, 2:5, 3:8].max(dim=0).values  # ties with the winners inside a block
    monkeypatch.setattr(resize, 'RESIZE_CHUNK_BYTES', 4 * size[0] * size[1] * 2)  # two classes at a time
    assert torch.equal(resized_argmax(logits, size, align_corners), full_argmax(logits, size, align_corners))


def test_half_precision_logits_keep_their_rounding_margin():
    logits = decoder_like_logits(num_classes=12, hw=(13, 17), regions=(3, 4), active=5).to(torch.bfloat16)
    for size in [(40, 50), (7, 9), (101, 33)]:
        assert torch.equal(resized_argmax(logits, size), full_argmax(logits, size)), size


def test_single_row_and_column_inputs():
    for shape in [(4, 1, 9), (4, 9, 1), (4, 1, 1)]:
        logits = torch.randn(shape)
        assert torch.equal(resized_argmax(logits, (17, 23)), full_argmax(logits, (17, 23)))


def test_decoder_like_logits_resize_few_classes_and_give_the_same_labels(monkeypatch):
    logits = decoder_like_logits()
    candidates = winning_candidates(logits)
    assert 2 < len(candidates) <= 13 and torch.equal(candidates, candidates.sort().values)
    resized, original = [], F.interpolate

    def interpolate(x, *args, **kwargs):
        resized.append(x.shape[1])
        return original(x, *args, **kwargs)

    monkeypatch.setattr(F, 'interpolate', interpolate)
    pred = resized_argmax(logits, (300, 410))
    assert sum(resized) == len(candidates)
    monkeypatch.undo()
    assert torch.equal(pred, full_argmax(logits, (300, 410)))


def test_candidates_keep_a_class_that_wins_only_between_input_pixels():
    """Class 2 is second at both pixels but first halfway between them."""
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])[:, None, :]  # [3, 1, 2]
    assert winning_candidates(logits).tolist() == [0, 1, 2]
    pred = resized_argmax(logits, (1, 8))
    assert 2 in pred.unique().tolist() and torch.equal(pred, full_argmax(logits, (1, 8)))
    # below neither class at both pixels, but below their mean: max(1 - t, t) >= 0.5 > 0.4
    below_mean = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.4, 0.4]])[:, None, :]
    assert winning_candidates(below_mean).tolist() == [0, 1]
    assert torch.equal(resized_argmax(below_mean, (1, 8)), full_argmax(below_mean, (1, 8)))


def test_random_logits_with_near_ties_give_the_same_labels():
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        logits = decoder_like_logits(num_classes=12, hw=(13, 17), regions=(3, 4), active=5, seed=trial)
        logits += torch.randn(logits.shape, generator=g) * 1e-7  # near-ties at float precision
        size = (int(torch.randint(5, 90, (1,), generator=g)), int(torch.randint(5, 90, (1,), generator=g)))
        assert torch.equal(resized_argmax(logits, size), full_argmax(logits, size)), (trial, size)


def test_non_finite_logits_resize_every_class():
    logits = torch.randn(4, 5, 6)
    logits[2, 1, 1] = float('nan')
    logits[1, 3, 3] = float('inf')
    assert winning_candidates(logits).tolist() == [0, 1, 2, 3]
    assert resized_argmax(logits, (11, 13)).shape == (1, 11, 13)
