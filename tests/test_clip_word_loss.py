"""ContrastiveCLIP's word grounding (word_loss_weight > 0, the toy emergence recipe configs/toy/clip_words.yml)."""
import math

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_model_cfg
from models import build_model

L = 16  # context length of tests/configs/clip.yml


def _tokens(*ids):
    t = torch.zeros(L, dtype=torch.long)
    t[:len(ids)] = torch.tensor(ids)
    return t


def _model(weight=1.0):
    torch.manual_seed(0)
    return build_model(tiny_model_cfg('clip', word_loss_weight=weight)).double()


def test_word_loss_matches_a_hand_computation():
    model = _model()
    caption = torch.stack([_tokens(49406, 11, 12, 49407), _tokens(49406, 13, 49407), _tokens(49406, 14, 49407)])
    circle, star, ring = _tokens(49406, 21, 49407), _tokens(49406, 22, 49407), _tokens(49406, 23, 49407)
    # image 0 names circle and star; image 1 star and a caption copy (padding, left out); image 2 only padding
    words = torch.stack([torch.stack([circle, star]), torch.stack([star, caption[1]]),
                         torch.stack([caption[2], caption[2]])])
    dense = torch.randn(3, 16, 2, 2, dtype=torch.float64)
    scale = torch.tensor(7.0, dtype=torch.float64)
    got = model.word_loss(dense, caption, words, scale)

    distinct = [circle, star]  # ring never occurs: the vocabulary is the batch's own words
    word_x = F.normalize(model.encode_text(torch.stack(distinct)), dim=-1)
    expected = []
    for b, own in ((0, [0, 1]), (1, [1])):
        patches = F.normalize(dense[b].flatten(1), dim=0)  # [C, 4]
        best = torch.stack([(word_x[u] @ patches).max() for u in range(2)]) * scale
        log_p = torch.log_softmax(best, dim=0)
        expected.append(-sum(log_p[u] for u in own) / len(own))
    assert ring is not None
    assert torch.allclose(got, torch.stack(expected).mean(), atol=1e-12)


def test_word_loss_reaches_the_best_patch_only():
    model = _model()
    caption = torch.stack([_tokens(49406, 11, 49407), _tokens(49406, 12, 49407)])
    words = torch.stack([_tokens(49406, 21, 49407), _tokens(49406, 22, 49407)])[:, None]
    dense = torch.randn(2, 16, 3, 3, dtype=torch.float64, requires_grad=True)
    model.word_loss(dense, caption, words, torch.tensor(10.0, dtype=torch.float64)).backward()
    touched = [set(torch.nonzero(g.abs().sum(dim=0).flatten()).flatten().tolist()) for g in dense.grad]
    word_x = F.normalize(model.encode_text(words[:, 0]), dim=-1)  # the 2 distinct words, in token order
    cos = torch.einsum('bcp,uc->bup', F.normalize(dense.detach().flatten(2), dim=1), word_x)
    best = [set(cos[b].argmax(dim=-1).tolist()) for b in range(2)]
    assert touched == best  # per image: only the best patch of each distinct word


def test_forward_train_adds_the_weighted_word_loss():
    torch.manual_seed(1)
    image = torch.randn(4, 3, 32, 32, dtype=torch.float64)
    caption = torch.stack([_tokens(49406, 11 + i, 49407) for i in range(4)])
    words = torch.stack([_tokens(49406, 21 + i % 2, 49407) for i in range(4)])[:, None]
    text = torch.cat([caption[:, None], words], dim=1)
    one, three = _model(1.0), _model(3.0)
    out1, out3 = one.forward_train(image, text), three.forward_train(image, text)
    assert torch.allclose(out1['loss'], out3['loss'])
    assert torch.allclose(3 * out1['word_loss'], out3['word_loss'])
    assert out1['word_loss'].item() > 0 and math.isfinite(out1['word_loss'].item())
    plain = _model(0.0).forward_train(image, caption)
    assert torch.allclose(plain['loss'], out1['loss']) and 'word_loss' not in plain


def test_word_loss_needs_prompted_words():
    with pytest.raises(ValueError, match='multi_label'):
        _model().forward_train(torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.ones(2, L, dtype=torch.long))
    with pytest.raises(ValueError, match='word_loss_weight must be >= 0'):
        _model(-1.0)
