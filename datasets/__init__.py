from .tokenizer import tokenize

__all__ = ['tokenize']
