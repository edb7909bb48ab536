"""Per-crop zero-shot segmentation through the method contract: the method owns its mask generation."""
import inspect
from typing import Mapping


def zero_shot_logits(model, img, text_embedding, with_bg, bg_thresh, **method_options):
    """img: [B, 3, H, W] normalised crop(s); text_embedding: [N, C] from the model's class embeddings
    -> logits [B, N (+1 background first if with_bg), H, W], as `model.zero_shot_logits` computes them."""
    return model.zero_shot_logits(img, text_embedding, with_bg, bg_thresh, **method_options)


def method_options(model, settings: Mapping) -> dict:
    """The entries of a protocol's `settings` (test_cfg) that the model's `zero_shot_logits` names."""
    params = inspect.signature(model.zero_shot_logits).parameters
    named = {n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    named -= {'img', 'text_embedding', 'with_bg', 'bg_thresh'}
    return {k: v for k, v in settings.items() if k in named}
