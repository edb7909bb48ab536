"""OVSegmentor's training data: entity vocabulary, masked questions and answers built from captions, cross images.

The published code (Jazzcharles/OVSegmentor, datasets/clip_dataset.py and datasets/data_process_cc12m.py) filters
CC12M to the captions that name one of 100 entity words (CC4M), pre-samples for every image 10 images that share one
of its entities, and builds at load time:
- question: the caption split at spaces, each word stripped of the characters ' and s at both ends, '.' removed,
  lemmatised, mapped through the synonyms; a word that lands in the 73 classes becomes `[MASK]`;
- answer: the part before '{}' of a random one of CLIP's 80 ImageNet templates + the distinct entities joined by ' and ';
- cross image: one of the 10 pre-sampled images, and "A photo of <entity>" for the entity they share.

Offline differences (nothing is downloaded at run time; nltk's WordNet and punkt data are not available):
- lemmatiser: a word is kept if it is in the vocabulary, else TextBlob's `singularize` and WordNet's noun suffix
  rules (-s, -ses, -xes, -zes, -ches, -shes, -men, -ies) are tried; only reaching the vocabulary matters here;
- word tokenizer of the filter (tools/prepare_ovsegmentor_data.py): nltk's Treebank tokenizer on sentences split at
  '.', '!' or '?' followed by a space, instead of `nltk.word_tokenize` (punkt);
- the answer lists the entities in caption order (the published `list(set(...))` order changes with the hash seed).
"""
import io
import json
import os.path as osp
import random
from functools import lru_cache
from typing import Dict, List, Optional, Sequence

import numpy as np

# the 100 entity words of CC4M (published TOP_CLASSES_1)
ENTITY_WORDS = (
    'people', 'man', 'men', 'woman', 'women', 'girl', 'boy', 'lady', 'kid', 'child', 'children', 'baby', 'student',
    'bride', 'groom', 'couple', 'prince', 'princess', 'car', 'bus', 'truck', 'motorcycle', 'train', 'bicycle', 'boat',
    'aeroplane', 'airplane', 'motorbike', 'bike', 'cup', 'bottle', 'bowl', 'knife', 'spoon', 'glass', 'fork', 'chair',
    'table', 'bench', 'clock', 'laptop', 'light', 'vase', 'plant', 'remote', 'microwave', 'toaster', 'oven', 'mouse',
    'keyboard', 'sofa', 'monitor', 'desk', 'tv', 'TV', 'couch', 'flower', 'refrigerator', 'house', 'building', 'hotel',
    'handbag', 'umbrella', 'book', 'backpack', 'phone', 'shirt', 'tie', 'suitcase', 'T-shirt', 'bag', 'box', 'sink',
    'bed', 'toilet', 'cat', 'dog', 'horse', 'bird', 'cow', 'sheep', 'elephant', 'bear', 'zebra', 'giraffe', 'ball',
    'racket', 'skateboard', 'skis', 'snowboard', 'surfboard', 'kite', 'pizza', 'cake', 'apple', 'banana', 'sandwich',
    'orange', 'carrot', 'donut')
# published syn_dict: similar entities share one class
ENTITY_SYNONYMS = {
    **{w: 'people' for w in ('people', 'man', 'men', 'woman', 'women', 'girl', 'boy', 'lady', 'kid', 'child',
                             'children', 'baby', 'student', 'bride', 'groom', 'couple', 'prince', 'princess')},
    'airplane': 'aeroplane', 'motorbike': 'motorcycle', 'bike': 'bicycle', 'TV': 'tv', 'desk': 'table',
    'couch': 'sofa', 'building': 'house', 'hotel': 'house', 'T-shirt': 'shirt', 'T-Shirt': 'shirt', 'handbag': 'bag'}
# the 73 classes the entities map to (published TOP_UNIQUE_CLASSES)
ENTITY_CLASSES = tuple(dict.fromkeys(ENTITY_SYNONYMS.get(w, w) for w in ENTITY_WORDS))
NOUN_SUFFIX_RULES = (('s', ''), ('ses', 's'), ('xes', 'x'), ('zes', 'z'), ('ches', 'ch'), ('shes', 'sh'),
                     ('men', 'man'), ('ies', 'y'))
CROSS_INDEX_FILE = 'cross_images.npy'
CROSS_SHARDS_FILE = 'cross_shards.json'


class EntityVocabulary:
    """Entity words (matched exactly in captions), their synonyms and the classes they map to."""

    def __init__(self, words: Sequence[str] = ENTITY_WORDS, synonyms: Optional[Dict[str, str]] = None,
                 classes: Sequence[str] = ENTITY_CLASSES):
        self.words = frozenset(words)
        self.synonyms = dict(ENTITY_SYNONYMS if synonyms is None else synonyms)
        self.classes = frozenset(classes)

    @classmethod
    def from_classes(cls, names: Sequence[str]) -> 'EntityVocabulary':
        """Every class name is an entity word and its own class (e.g. a toy world's classes.json)."""
        return cls(words=names, synonyms={}, classes=names)

    @classmethod
    def from_config(cls, classes_file: Optional[str]) -> 'EntityVocabulary':
        """data.text_aug.word_vocab: a class-names JSON, or None for the published 100 entity words."""
        if not classes_file:
            return cls()
        from datasets.imagenet import read_classes_file
        return cls.from_classes(read_classes_file(classes_file))

    def lemma(self, word: str) -> str:
        """The first of the word, its TextBlob singular and its WordNet suffix detachments that is an entity word,
        a synonym or a class; else the word itself."""
        known = lambda w: w in self.classes or w in self.synonyms or w in self.words  # noqa: E731
        if known(word):
            return word
        from textblob import Word
        candidates = [str(Word(word).singularize())]
        candidates += [word[:-len(end)] + base for end, base in NOUN_SUFFIX_RULES if word.endswith(end)]
        return next((c for c in candidates if known(c)), word)

    def entity_class(self, word: str) -> Optional[str]:
        """The class a caption word stands for (published judge_noun: '.' removed, lower-cased, lemmatised,
        synonyms), or None."""
        lemma = self.lemma(word.replace('.', '').lower())
        lemma = self.synonyms.get(lemma, lemma)
        return lemma if lemma in self.classes else None

    def caption_entities(self, caption: str) -> List[str]:
        """Distinct entity words of a caption, exactly as written, in caption order (the CC4M filter)."""
        import re
        from nltk.tokenize import NLTKWordTokenizer
        tokenizer = NLTKWordTokenizer()
        tokens = [t for sentence in re.split(r'(?<=[.!?])\s+', caption) for t in tokenizer.tokenize(sentence)]
        return list(dict.fromkeys(t for t in tokens if t in self.words))


def question_and_answer(caption: str, vocabulary: EntityVocabulary, strip_chars: str = "'s",
                        rng: random.Random = random) -> tuple:
    """caption -> (question with its entities as [MASK], answer 'a photo of a dog and people' style).

    strip_chars: what is stripped from both ends of every word first; the published "'s" strips the characters '
    and s, so words that begin or end with s ('bus', 'sheep', 'sofa', 'skis') are never masked.
    """
    from datasets.templates import full_templates
    question, entities = [], []
    for word in caption.split(' '):
        word = word.strip(strip_chars).strip(' ').strip('\n')
        entity = vocabulary.entity_class(word)
        if entity is None:
            question.append(word)
        else:
            question.append('[MASK]')
            entities.append(entity)
    question = ' '.join(question).replace("'", '').strip()
    answer = rng.choice(full_templates()).split('{}')[0] + ' and '.join(dict.fromkeys(entities))
    return question, answer


@lru_cache(maxsize=8)
def cross_image_index(folder: str):
    """(records [N, 3] int64 of (shard, offset, size) per sample, shard file names) of a prepared dataset folder."""
    records_file, shards_file = osp.join(folder, CROSS_INDEX_FILE), osp.join(folder, CROSS_SHARDS_FILE)
    if not osp.isfile(records_file) or not osp.isfile(shards_file):
        from datasets.shards import ShardConfigError
        raise ShardConfigError(f'{folder}: no {CROSS_INDEX_FILE} / {CROSS_SHARDS_FILE} for the cross images; prepare '
                               'the shards with tools/prepare_ovsegmentor_data.py')
    with open(shards_file) as f:
        shards = json.load(f)['shards']
    return np.load(records_file, mmap_mode='r'), shards


def read_cross_image(folder: str, index: int):
    """The RGB image of sample `index` of a prepared dataset folder, read from its shard by offset; BadSample when
    the index or the image is unusable."""
    from PIL import Image

    from datasets.shards import BadSample
    records, shards = cross_image_index(folder)
    if not 0 <= index < len(records):
        raise BadSample('unreadable_cross_image')
    shard, offset, size = (int(v) for v in records[index])
    try:
        with open(osp.join(folder, shards[shard]), 'rb') as f:
            f.seek(offset)
            image = Image.open(io.BytesIO(f.read(size)))
            image.load()
        return image.convert('RGB')
    except Exception:  # PIL raises many types for a damaged image
        raise BadSample('unreadable_cross_image') from None


class OVSegmentorSample:
    """A training sample of OVSegmentor: (raw shard sample, RGB image, caption) -> {'image': [3, H, W], 'text',
    'question', 'answer' (with questions), 'cross_image': [3, H, W], 'cross_entity' (with cross images)}; the texts are
    token dicts {'input_ids', 'attention_mask'} [context_length] of the BERT folder's vocabulary.

    Picklable (loader workers): the tokenizer is read in each worker on first use.
    """

    def __init__(self, img_transform, bert_folder: str, context_length: int, vocabulary: EntityVocabulary,
                 questions: bool, cross_images: bool, strip_chars: str = "'s"):
        self.img_transform = img_transform
        self.bert_folder = bert_folder
        self.context_length = context_length
        self.vocabulary = vocabulary
        self.questions = questions
        self.cross_images = cross_images
        self.strip_chars = strip_chars
        self._tokenizer = None

    def __getstate__(self):
        return {**self.__dict__, '_tokenizer': None}

    def tokenize(self, text: str) -> Dict:
        from .bert import load_tokenizer
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.bert_folder)
        encoded = self._tokenizer([text], padding='max_length', truncation=True, return_tensors='pt',
                                  max_length=self.context_length, return_token_type_ids=False)
        return {'input_ids': encoded['input_ids'][0], 'attention_mask': encoded['attention_mask'][0]}

    def cross_pair(self, sample: dict):
        """(RGB image, entity word) of one of the sample's pre-sampled cross images, chosen at random."""
        from datasets.shards import BadSample
        try:
            pairs = json.loads(sample['json'])['cross']
        except (KeyError, ValueError, TypeError):
            raise BadSample('missing_cross_images') from None
        if not pairs:
            raise BadSample('missing_cross_images')
        entity, index = pairs[random.randrange(len(pairs))]
        return read_cross_image(osp.dirname(sample['__url__']), int(index)), entity

    def __call__(self, sample: dict, image, caption: str) -> Dict:
        item = {'image': self.img_transform(image), 'text': self.tokenize(caption)}
        if self.questions:
            question, answer = question_and_answer(caption, self.vocabulary, self.strip_chars)
            item.update(question=self.tokenize(question), answer=self.tokenize(answer))
        if self.cross_images:
            cross_image, entity = self.cross_pair(sample)
            from .model import CROSS_ENTITY_PREFIX
            item.update(cross_image=self.img_transform(cross_image),
                        cross_entity=self.tokenize(CROSS_ENTITY_PREFIX + entity))
        return item
