"""CLIP BPE tokenizer: ids pinned against the published GroupViT tokenizer (run once on the same strings)."""
import pytest
import torch

from datasets import tokenize
from datasets.tokenizer import Tokenize, get_tokenizer

PINNED = {
    'a photo of a dog.': [49406, 320, 1125, 539, 320, 1929, 269, 49407],
    'Tom &amp; Jerry': [49406, 2435, 261, 9164, 49407],
    'naïve café': [49406, 1097, 35689, 563, 15304, 49407],
    "it's 3 dogs": [49406, 585, 568, 274, 3255, 49407],
    '<|endoftext|>': [49406, 49407, 49407],
    '東京': [49406, 48338, 21078, 361, 49407],
    '': [49406, 49407],
}


@pytest.mark.parametrize('text,ids', list(PINNED.items()))
def test_pinned_ids(text, ids):
    out = tokenize([text])
    assert out.dtype == torch.long and out.shape == (1, 77)
    assert out[0, :len(ids)].tolist() == ids
    assert out[0, len(ids):].eq(0).all()


def test_cleaning_is_case_and_whitespace_insensitive():
    a = tokenize(['A  PHOTO\tof a\n dog.  '])
    b = tokenize(['a photo of a dog.'])
    assert torch.equal(a, b)


def test_batch_and_single_string_shapes():
    assert tokenize('a dog').shape == (1, 77)
    assert tokenize(['a dog', 'a cat', '']).shape == (3, 77)
    assert tokenize(['a dog'], context_length=16).shape == (1, 16)
    assert Tokenize(max_seq_len=77)('a dog').shape == (77, )


def test_truncation_keeps_eot_last():
    out = tokenize([' '.join(['photograph'] * 80)])[0]
    assert out[0].item() == 49406
    assert out[1:76].eq(8853).all()
    assert out[-1].item() == 49407
    with pytest.raises(ValueError, match='more than 77'):
        Tokenize(truncate=False)(' '.join(['photograph'] * 80))


def test_exact_fit_is_not_truncated():
    text = ' '.join(['photograph'] * 75)
    out = Tokenize(truncate=False)(text)
    assert out[-1].item() == 49407 and out[-2].item() == 8853


def test_decode_round_trip():
    tok = get_tokenizer()
    ids = tok.encode('a photo of a dog.')
    assert tok.decode(ids).strip() == 'a photo of a dog .'
    assert len(tok.encoder) == 49408
