"""Caption -> token transforms, including GroupViT's multi-label prompting.

With ``text_aug.multi_label = k > 0`` a caption becomes ``1 + k`` texts: the caption, then up to ``k`` of its words
(sampled without replacement) each written into a random ImageNet prompt template, padded with the caption itself
when it has fewer than ``k`` such words. As in GroupViT, ``word_type: noun`` keeps words tagged as nouns *or verbs*
(Penn tags NN, NNS, NNP, VB, VBD, VBG, VBN, VBP, VBZ). ``text_aug.word_vocab`` (a class-names JSON file, as
OVSegmentor's concept vocabulary) keeps only the words in it; unset, every tagged word counts. Tagging uses
textblob's PatternTagger, which ships its lexicon, so nothing is downloaded at run time.
"""
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
from omegaconf import DictConfig

from .imagenet import read_classes_file
from .templates import get_templates

WORD_TAGS = ('NN', 'NNS', 'NNP', 'VBG', 'VB', 'VBD', 'VBN', 'VBP', 'VBZ')
NOUN_PHRASE_GRAMMAR = r"""
    NBAR: {<NN.*|JJ>*<NN.*>}
    NP: {<NBAR>}
        {<NBAR><IN><NBAR>}
"""


class PosTagger:
    """Penn-treebank tags of a sentence, offline. The tagger is created lazily so the object pickles to workers."""

    def __init__(self):
        self._tagger = None

    def __call__(self, text: str) -> List[tuple]:
        if self._tagger is None:
            from textblob.en.taggers import PatternTagger
            self._tagger = PatternTagger()
        return [(word, tag) for word, tag in self._tagger.tag(text)]

    def __getstate__(self):
        return {'_tagger': None}


def tagged_words(tags: Sequence[tuple], keep: Sequence[str] = WORD_TAGS) -> List[str]:
    """Words whose tag is one of ``keep``, in caption order (repeats kept)."""
    return [word for word, tag in tags if tag in keep]


def noun_phrases(tags: Sequence[tuple]) -> List[str]:
    """Distinct noun phrases (adjectives/nouns ending in a noun, optionally joined by a preposition), in order."""
    import nltk
    tree = nltk.RegexpParser(NOUN_PHRASE_GRAMMAR).parse(list(tags))
    phrases = []
    for subtree in tree.subtrees(lambda t: t.label() == 'NP'):
        phrase = ' '.join(word for word, _ in subtree.leaves())
        if phrase not in phrases:
            phrases.append(phrase)
    return phrases


class Tokenize:
    """str -> LongTensor [context_length]."""

    def __init__(self, tokenize: Callable, context_length: int = 77):
        self.tokenize = tokenize
        self.context_length = context_length

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenize([text], context_length=self.context_length)[0]


class MultiLabelTokenize:
    """str -> LongTensor [1 + max_word, context_length]: the caption then prompted words (see module docstring)."""

    def __init__(self, tokenize: Callable, max_word: int, context_length: int = 77, template_set: str = 'full',
                 word_type: str = 'noun', vocab: Optional[Sequence[str]] = None):
        if word_type not in ('noun', 'noun_phrase'):
            raise ValueError(f"text_aug.word_type must be 'noun' or 'noun_phrase', got {word_type!r}")
        self.tokenize = tokenize
        self.max_word = max_word
        self.context_length = context_length
        self.templates = get_templates(template_set, 'data.text_aug.template_set')
        self.word_type = word_type
        self.vocab = frozenset(vocab) if vocab is not None else None
        self.tagger = PosTagger()

    def words(self, text: str) -> List[str]:
        tags = self.tagger(text)
        words = tagged_words(tags) if self.word_type == 'noun' else noun_phrases(tags)
        return words if self.vocab is None else [w for w in words if w in self.vocab]

    def prompts(self, text: str) -> List[str]:
        """The ``max_word`` texts that follow the caption."""
        words = self.words(text)
        prompts = []
        if words:
            chosen = np.random.choice(words, min(self.max_word, len(words)), replace=False)
            prompts = [np.random.choice(self.templates).format(word) for word in chosen]
        return prompts + [text] * (self.max_word - len(prompts))

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenize([text] + self.prompts(text), context_length=self.context_length)


def build_text_transform(is_train: bool, text_aug: DictConfig, tokenize: Callable = None) -> Callable:
    """Multi-label prompting for training when ``text_aug.multi_label > 0``, plain tokenisation otherwise."""
    if tokenize is None:
        from .tokenizer import tokenize
    if is_train and text_aug.multi_label > 0:
        vocab_file = text_aug.get('word_vocab')
        return MultiLabelTokenize(tokenize, text_aug.multi_label, text_aug.max_seq_len,
                                  template_set=text_aug.get('template_set', 'full'), word_type=text_aug.word_type,
                                  vocab=read_classes_file(vocab_file) if vocab_file else None)
    return Tokenize(tokenize, text_aug.max_seq_len)
