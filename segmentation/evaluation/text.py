"""Prompt templates and class text embeddings for zero-shot segmentation."""
import torch

# TCL's "custom" set: CLIP's 7-template ImageNet subset plus two plural-friendly prompts
TCL_EXTRA_TEMPLATES = ('a photo of many {}.', 'a photo of {}s.')


def segmentation_templates(name):
    """'simple' | 'subset' | 'full' | 'identity' (datasets.imagenet) | 'custom' (TCL) -> list of '{}' templates."""
    from datasets.imagenet import get_templates
    if name == 'custom':
        return get_templates('subset') + list(TCL_EXTRA_TEMPLATES)
    try:
        return get_templates(name)
    except KeyError:
        raise ValueError(f"unknown template set {name!r}; choose 'simple', 'subset', 'full', 'identity' or "
                         "'custom'") from None


@torch.no_grad()
def class_text_embedding(model, names, template, classes_per_chunk=64):
    """names: N class prompts; template: set name -> [N, C] template-averaged, L2-normalised embeddings."""
    templates = segmentation_templates(template)
    chunks = []
    for start in range(0, len(names), classes_per_chunk):
        chunk = names[start:start + classes_per_chunk]
        tokens = model.tokenize([t.format(name) for name in chunk for t in templates])
        chunks.append(model.build_text_embedding(tokens.view(len(chunk), len(templates), -1)))
    return torch.cat(chunks)
