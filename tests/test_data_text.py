"""datasets/captions.py, datasets/imagenet.py, datasets/templates.py, datasets/transforms.py."""
import json
import pickle

import nltk
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from datasets import TEMPLATE_SETS, build_img_transform, build_text_transform, get_templates, tokenize
from datasets.captions import MultiLabelTokenize, PosTagger, Tokenize, tagged_words
from datasets.imagenet import ClassListError, imagenet_classes, val_class_names
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from utils.config import ConfigError

CAPTIONS = {
    'A man riding a wave on top of a surfboard.': {'man', 'riding', 'wave', 'surfboard'},
    'Two dogs playing with a frisbee in the park': {'dogs', 'playing', 'frisbee', 'park'},
    'a bowl of fresh fruit sits on a wooden kitchen table': {'bowl', 'fruit', 'sits', 'kitchen', 'table'},
    'a small red star beside a blue ring on a striped floor': {'star', 'ring', 'floor'},
}


@pytest.fixture(autouse=True)
def offline_nltk(monkeypatch):
    """Fail loudly if anything tries to download or look up NLTK data."""
    def refuse(*args, **kwargs):
        raise AssertionError('NLTK data was requested; the tagger must work offline')
    monkeypatch.setattr(nltk, 'download', refuse)
    monkeypatch.setattr(nltk.data, 'find', refuse)


def text_aug(**kw):
    return OmegaConf.create({'max_seq_len': 77, 'multi_label': 0, 'word_type': 'noun', **kw})


@pytest.mark.parametrize('caption,expected', CAPTIONS.items())
def test_tagger_finds_nouns_and_verbs_of_real_captions(caption, expected):
    words = set(tagged_words(PosTagger()(caption)))
    assert expected <= words
    assert not words & {'a', 'the', 'of', 'on', 'with', 'in', 'small', 'red', 'blue', 'wooden', 'fresh'}


def test_multi_label_output_layout_and_prompts():
    np.random.seed(0)
    transform = build_text_transform(True, text_aug(multi_label=3))
    assert isinstance(transform, MultiLabelTokenize)
    caption = 'Two dogs playing with a frisbee in the park'
    prompts = transform.prompts(caption)
    templates = get_templates('full')
    assert len(prompts) == 3
    used = []
    for prompt in prompts:
        matches = [w for w in CAPTIONS[caption] if any(t.format(w) == prompt for t in templates)]
        assert len(matches) == 1, prompt
        used.append(matches[0])
    assert len(set(used)) == 3
    tokens = transform(caption)
    assert tokens.shape == (4, 77) and tokens.dtype == torch.long
    assert torch.equal(tokens[0], tokenize([caption])[0])


def test_multi_label_pads_with_the_caption_when_words_run_out():
    np.random.seed(1)
    transform = build_text_transform(True, text_aug(multi_label=3, max_seq_len=16))
    prompts = transform.prompts('a red kite')
    assert len(prompts) == 3 and prompts.count('a red kite') == 2
    assert transform('of the and').tolist() == tokenize(['of the and'] * 4, context_length=16).tolist()


def test_noun_phrases_and_plain_tokenisation():
    transform = build_text_transform(True, text_aug(multi_label=2, word_type='noun_phrase'))
    assert transform.words('a small red star beside a blue ring on a striped floor') == [
        'small red star', 'blue ring', 'striped floor']
    plain = build_text_transform(False, text_aug(multi_label=3))
    assert isinstance(plain, Tokenize) and plain('a dog').shape == (77,)
    with pytest.raises(ValueError, match='word_type'):
        build_text_transform(True, text_aug(multi_label=2, word_type='verb'))


def test_transform_pickles_for_loader_workers():
    transform = build_text_transform(True, text_aug(multi_label=2))
    transform('a dog on a couch')
    clone = pickle.loads(pickle.dumps(transform))
    np.random.seed(3)
    a = clone('a dog on a couch')
    np.random.seed(3)
    assert torch.equal(a, transform('a dog on a couch'))


def test_template_sets_and_imagenet_classes():
    assert [len(get_templates(n)) for n in ('full', 'subset', 'simple', 'identity', 'custom')] == [80, 7, 1, 1, 9]
    assert all(t.count('{}') == 1 for name in TEMPLATE_SETS for t in get_templates(name))
    assert get_templates('custom') == get_templates('subset') + ['a photo of many {}.', 'a photo of {}s.']  # TCL's
    assert get_templates('simple') == ['a photo of a {}.']
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[0] == 'tench' and classes[-1] == 'toilet paper'
    with pytest.raises(ConfigError, match="^evaluate.seg.template: unknown template set 'fancy'; choose one of "
                                          "custom, full, identity, simple, subset$"):
        get_templates('fancy', 'evaluate.seg.template')


def test_val_class_names_from_file_or_imagenet(tmp_path):
    (tmp_path / 'classes.json').write_text(json.dumps({'classes': ['star', 'ring', 'heart']}))
    cfg = OmegaConf.create({'dataset': {'val': ['toy'], 'meta': {'toy': {
        'classes_file': str(tmp_path / 'classes.json')}, 'imagenet': {}}}})
    assert val_class_names(cfg) == ['star', 'ring', 'heart']
    cfg.dataset.val = ['imagenet']
    assert len(val_class_names(cfg)) == 1000
    cfg.dataset.meta.imagenet.classes_file = str(tmp_path / 'missing.json')
    cfg.dataset.val = ['imagenet']
    with pytest.raises(ClassListError, match='missing.json'):
        val_class_names(cfg)


@pytest.mark.parametrize('deit', [False, True])
def test_image_transforms_shapes(deit):
    img_aug = OmegaConf.create({'deit_aug': deit, 'img_size': 32, 'img_scale': [0.08, 1.0], 'interpolation': 'bilinear',
                                'color_jitter': 0.4, 'auto_augment': 'rand-m9-mstd0.5-inc1', 're_prob': 0.25,
                                're_mode': 'pixel', 're_count': 1})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8))
    train, val = build_img_transform(True, img_aug), build_img_transform(False, img_aug)
    assert train(img).shape == (3, 32, 32) and val(img).shape == (3, 32, 32)
    flat = Image.new('RGB', (40, 40), (124, 116, 104))
    assert val(flat).abs().max() < 0.05  # ImageNet mean colour normalises to ~0


def test_word_vocab_and_template_set_choose_the_prompts(tmp_path):
    vocab = tmp_path / 'classes.json'
    vocab.write_text(json.dumps({'classes': ['kite', 'dog']}))
    np.random.seed(0)
    cfg = text_aug(multi_label=2, max_seq_len=16)
    cfg.word_vocab, cfg.template_set = str(vocab), 'simple'
    transform = build_text_transform(True, cfg)
    caption = 'a dog chasing a red kite in the park'
    assert transform.words(caption) == ['dog', 'kite']  # 'chasing' and 'park' are tagged too, but not in the vocab
    simple = get_templates('simple')
    assert sorted(transform.prompts(caption)) == sorted(t.format(w) for t in simple for w in ('dog', 'kite'))
    assert transform.prompts('a park at night') == ['a park at night'] * 2


def test_val_crop_pct_one_keeps_the_whole_image():
    img_aug = OmegaConf.create({'deit_aug': False, 'img_size': 32, 'val_crop_pct': 1.0})
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    whole = build_img_transform(False, img_aug)(img)
    pixels = torch.from_numpy(np.array(img)).permute(2, 0, 1) / 255.
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    expected = (pixels - mean) / std
    assert torch.allclose(whole, expected, atol=1e-5)
    img_aug.val_crop_pct = None  # published: resize to 64 then crop the centre 32
    assert not torch.allclose(build_img_transform(False, img_aug)(img), expected, atol=1e-2)


@pytest.mark.parametrize('grayscale', [0.0, 0.5, 1.0])
def test_grayscale_probability_of_the_plain_training_crop(grayscale):
    img_aug = OmegaConf.create({'deit_aug': False, 'img_size': 16, 'img_scale': [1.0, 1.0], 'hflip': False,
                                'grayscale': grayscale})
    transform = build_img_transform(True, img_aug)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8))
    mean, std = torch.tensor(IMAGENET_DEFAULT_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_DEFAULT_STD).view(3, 1, 1)
    torch.manual_seed(0)
    grey = []
    for _ in range(200):
        rgb = transform(img) * std + mean  # back to [0, 1]: a grey crop has three equal channels
        grey.append(bool(torch.allclose(rgb[0], rgb[1], atol=1e-5) and torch.allclose(rgb[1], rgb[2], atol=1e-5)))
    assert abs(np.mean(grey) - grayscale) < 0.1
    with pytest.raises(ValueError, match='grayscale is a probability'):
        build_img_transform(True, OmegaConf.merge(img_aug, {'grayscale': 1.5}))
