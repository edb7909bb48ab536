"""OVSegmentor's text encoder: BERT (transformers' BertModel) read from a local Hugging Face folder, and its WordPiece
tokenizer.

The folder is what `bert-base-uncased` ships: `config.json`, `vocab.txt` and the weights (`model.safetensors`, or
`pytorch_model.bin` read weights-only). Nothing is downloaded.
"""
import json
import os.path as osp
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn

from ..builder import MODELS
from ..layers import init_vit_weights

WEIGHT_FILES = ('model.safetensors', 'pytorch_model.bin')
# names of the published/Hugging Face checkpoints that BertModel does not hold: pre-training heads
IGNORED_PREFIXES = ('cls.', )
# the original bert-base-uncased file names its LayerNorm parameters as TensorFlow did
LEGACY_NAMES = {'.gamma': '.weight', '.beta': '.bias'}


class BertFolderError(ValueError):
    """The BERT folder is missing, incomplete, or does not fit the text encoder."""


def bert_config(path: Optional[str]):
    """transformers BertConfig of `path`/config.json; bert-base-uncased's architecture when `path` is None."""
    from transformers import BertConfig
    if path is None:
        return BertConfig()
    config_file = osp.join(path, 'config.json')
    if not osp.isfile(config_file):
        raise BertFolderError(f'{path}: no config.json (expected a Hugging Face bert-base-uncased folder)')
    with open(config_file) as f:
        return BertConfig(**{k: v for k, v in json.load(f).items() if k not in ('architectures', 'transformers_version')})


def hf_bert_state_dict(weights: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """A Hugging Face BERT state dict (BertModel, or BertForPreTraining with its 'bert.' prefix and 'cls.' heads,
    LayerNorm as gamma/beta or weight/bias) -> BertModel names."""
    out = {}
    for key, value in weights.items():
        if key.startswith(IGNORED_PREFIXES):
            continue
        key = key[len('bert.'):] if key.startswith('bert.') else key
        for old, new in LEGACY_NAMES.items():
            if key.endswith(old):
                key = key[:-len(old)] + new
        out[key] = value
    return out


def read_bert_weights(path: str) -> Dict[str, torch.Tensor]:
    """BertModel-named weights of the folder `path` (safetensors preferred; a .bin is read weights-only)."""
    from utils.checkpoint import extract_state_dict, read_checkpoint
    for name in WEIGHT_FILES:
        file = osp.join(path, name)
        if osp.isfile(file):
            return hf_bert_state_dict(extract_state_dict(read_checkpoint(file), file))
    raise BertFolderError(f"{path}: no weights ({' or '.join(WEIGHT_FILES)}); set model.text_encoder.pretrained: "
                          'false to start from random weights')


def load_tokenizer(path: Optional[str]):
    """WordPiece tokenizer (lower-cased) of the folder's vocab.txt.

    transformers 5's `BertTokenizer(vocab_file=...)` silently falls back to a 5-token default vocabulary, so the
    tokenizer is read with `from_pretrained(folder)` and its size is checked against vocab.txt.
    """
    from transformers import BertTokenizer
    if path is None:
        raise BertFolderError('model.text_encoder.pretrained_path is null: there is no vocabulary to tokenize with')
    vocab_file = osp.join(path, 'vocab.txt')
    if not osp.isfile(vocab_file):
        raise BertFolderError(f'{path}: no vocab.txt')
    with open(vocab_file, encoding='utf-8') as f:
        size = sum(1 for _ in f)
    tokenizer = BertTokenizer.from_pretrained(path, do_lower_case=True, local_files_only=True)
    if len(tokenizer) != size:
        raise BertFolderError(f'{vocab_file}: the tokenizer holds {len(tokenizer)} tokens, the file {size}')
    return tokenizer


@MODELS.register_module()
class Bert(nn.Module):
    """BERT text encoder; the text embedding is the last hidden state of `[CLS]` (not the pooler). Arguments mirror
    `model.text_encoder`.

    pretrained_path: local Hugging Face BERT folder (config.json, vocab.txt, weights); None builds bert-base-uncased's
        architecture with random weights (such a model cannot tokenize).
    pretrained: read the folder's weights; false keeps random weights (Linear and LayerNorm initialised as published).
    fixed: freeze every BERT parameter (stage 2).
    width: must equal the BERT hidden size. context_length: tokens per text (captions padded to it).
    layers, vocab_size, use_checkpoint: published keys with no effect (the architecture comes from config.json).
    attn_implementation: transformers' attention, 'eager' (the published arithmetic) or 'sdpa'.
    """

    def __init__(self, context_length: int = 77, width: int = 768, layers: int = 12, vocab_size: int = 30522,
                 use_checkpoint: bool = False, pretrained: bool = True, fixed: bool = False,
                 pretrained_path: Optional[str] = None, attn_implementation: str = 'eager'):
        super().__init__()
        from transformers import BertModel
        if attn_implementation not in ('eager', 'sdpa'):
            raise ValueError(f"attn_implementation must be 'eager' or 'sdpa', got {attn_implementation!r}")
        config = bert_config(pretrained_path)
        if config.hidden_size != width:
            raise BertFolderError(f'model.text_encoder.width {width} differs from the BERT hidden size '
                                  f'{config.hidden_size}')
        config._attn_implementation = attn_implementation
        self.context_length = context_length
        self.width = width
        self.pretrained_path = pretrained_path
        self.transformer = BertModel(config)
        embeddings = self.transformer.embeddings
        # persistent like in the published checkpoints (transformers 4.21), so state_dict() has their names
        embeddings.register_buffer('position_ids', embeddings.position_ids, persistent=True)
        if pretrained and pretrained_path is not None:
            self.load_folder_weights(pretrained_path)
        else:
            self.transformer.apply(init_vit_weights)
        if fixed:
            self.transformer.requires_grad_(False)
        self._tokenizer = None

    def load_folder_weights(self, path: str):
        """Every BertModel tensor from the folder's weights (a file without position_ids keeps the arange)."""
        weights = read_bert_weights(path)
        own = self.transformer.state_dict()
        weights.setdefault('embeddings.position_ids', own['embeddings.position_ids'])
        missing = sorted(set(own) - set(weights))
        unexpected = sorted(set(weights) - set(own))
        misfit = [f'{k}: file {tuple(v.shape)}, model {tuple(own[k].shape)}' for k, v in weights.items()
                  if k in own and v.shape != own[k].shape]
        problems = [f'{label} {", ".join(names[:5])}' for label, names in
                    (('missing', missing), ('unexpected', unexpected), ('shape mismatch', misfit)) if names]
        if problems:
            raise BertFolderError(f'{path}: the weights do not fit config.json: ' + '; '.join(problems))
        self.transformer.load_state_dict(weights, strict=True)

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.pretrained_path)
        return self._tokenizer

    def tokenize(self, texts: Sequence[str], context_length: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """texts: N strings -> {'input_ids', 'attention_mask'}: LongTensors [N, context_length], `[CLS] ... [SEP]`
        then padding, truncated to context_length (no token type ids, as the published DistilBERT tokenizer)."""
        if isinstance(texts, str):
            raise TypeError('tokenize takes a list of strings, got one string')
        encoded = self.tokenizer(list(texts), padding='max_length', truncation=True, return_tensors='pt',
                                 max_length=context_length or self.context_length, return_token_type_ids=False)
        return {'input_ids': encoded['input_ids'], 'attention_mask': encoded['attention_mask']}

    def forward(self, tokens: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """tokens: {'input_ids', 'attention_mask'} [B, L] -> {'x': [B, width] ([CLS] last hidden state),
        'all_tokens': [B, L, width]}"""
        out = self.transformer(input_ids=tokens['input_ids'], attention_mask=tokens['attention_mask'])
        hidden = out.last_hidden_state
        return {'x': hidden[:, 0], 'all_tokens': hidden}
