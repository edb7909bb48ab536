"""CLIP byte-level BPE tokenizer (the vocabulary GroupViT and PGSeg checkpoints were trained with).

The merges file is the one shipped by the ``open_clip_torch`` package (``bpe_simple_vocab_16e6.txt.gz``).
Text is cleaned with ftfy, html-unescaped twice, whitespace-collapsed and lower-cased; every sequence is
``[<|startoftext|>] + bpe ids + [<|endoftext|>]`` zero-padded to the context length. Over-long sequences are
cut so that the end-of-text token stays the last one.
"""
import gzip
import html
from functools import lru_cache
from typing import Dict, Iterable, List, Sequence, Tuple, Union

import ftfy
import regex
import torch

SOT_TEXT = '<|startoftext|>'
EOT_TEXT = '<|endoftext|>'
NUM_MERGES = 49152 - 256 - 2
WORD_PATTERN = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)


def default_bpe_path() -> str:
    from open_clip.tokenizer import default_bpe
    return default_bpe()


@lru_cache()
def byte_to_unicode() -> Dict[int, str]:
    """Reversible map from the 256 byte values to printable unicode characters (no whitespace/control)."""
    printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1), *range(ord('®'), ord('ÿ') + 1)]
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def clean_text(text: str) -> str:
    """ftfy fix, double html unescape, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r'\s+', ' ', text).strip().lower()


class SimpleTokenizer:
    """CLIP BPE text <-> ids. ``encode`` returns the BPE ids without start/end tokens."""

    def __init__(self, bpe_path: str = None):
        with gzip.open(bpe_path or default_bpe_path(), 'rt', encoding='utf-8') as f:
            lines = f.read().split('\n')
        merges = [tuple(line.split()) for line in lines[1:NUM_MERGES + 1]]
        base = list(byte_to_unicode().values())
        vocab = base + [c + '</w>' for c in base] + [''.join(m) for m in merges] + [SOT_TEXT, EOT_TEXT]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.merge_rank = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = byte_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        self.sot_token = self.encoder[SOT_TEXT]
        self.eot_token = self.encoder[EOT_TEXT]
        self._cache = {SOT_TEXT: (SOT_TEXT, ), EOT_TEXT: (EOT_TEXT, )}

    def bpe(self, word: str) -> Tuple[str, ...]:
        """Merge the characters of one pre-token (already byte-mapped) by merge rank, lowest rank first."""
        if word in self._cache:
            return self._cache[word]
        parts = [*word[:-1], word[-1] + '</w>']
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.merge_rank.get(p, NUM_MERGES))
            if pair not in self.merge_rank:
                break
            parts = self._merge_pair(parts, pair)
        self._cache[word] = tuple(parts)
        return self._cache[word]

    @staticmethod
    def _merge_pair(parts: List[str], pair: Tuple[str, str]) -> List[str]:
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == pair:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        return merged

    def encode(self, text: str) -> List[int]:
        ids = []
        for word in WORD_PATTERN.findall(clean_text(text)):
            mapped = ''.join(self.byte_encoder[b] for b in word.encode('utf-8'))
            ids.extend(self.encoder[tok] for tok in self.bpe(mapped))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        text = ''.join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode('utf-8', errors='replace').replace('</w>', ' ')


@lru_cache()
def get_tokenizer() -> SimpleTokenizer:
    return SimpleTokenizer()


class Tokenize:
    """Callable: str -> LongTensor [max_seq_len]; list of N str -> LongTensor [N, max_seq_len].

    truncate=False raises ValueError for a text longer than max_seq_len tokens (start/end included).
    """

    def __init__(self, tokenizer: SimpleTokenizer = None, max_seq_len: int = 77, truncate: bool = True):
        self.tokenizer = tokenizer or get_tokenizer()
        self.max_seq_len = max_seq_len
        self.truncate = truncate

    def __call__(self, texts: Union[str, Sequence[str]]) -> torch.Tensor:
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        out = torch.zeros(len(texts), self.max_seq_len, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.tokenizer.sot_token, *self.tokenizer.encode(text), self.tokenizer.eot_token]
            if len(ids) > self.max_seq_len:
                if not self.truncate:
                    raise ValueError(f'text {text[:60]!r} has {len(ids)} tokens, more than {self.max_seq_len}')
                ids = ids[:self.max_seq_len - 1] + [self.tokenizer.eot_token]
            out[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out[0] if single else out


def tokenize(texts: Union[str, Sequence[str]], context_length: int = 77) -> torch.Tensor:
    """texts: str or N str -> LongTensor [N, context_length] (N=1 for a single str), truncating."""
    texts = [texts] if isinstance(texts, str) else texts
    return Tokenize(max_seq_len=context_length, truncate=True)(texts)
