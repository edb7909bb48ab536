"""Zero-shot classification: class embeddings from names and prompt templates, and top-1/top-5 accuracy.

`class_embeddings` is the one place where class names become text embeddings; the segmentation evaluator and the
demos call it too.
"""
from dataclasses import dataclass
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from datasets import format_counts, get_templates, merge_counts, val_class_names
from datasets.shards import sum_counts_over_ranks
from models.base import map_tokens

from .distributed import sum_over_ranks
from .logging import get_logger
from .precision import Precision


@torch.no_grad()
def class_embeddings(model: torch.nn.Module, names: Sequence[str], templates: Sequence[str],
                     max_texts: int = 4096) -> torch.Tensor:
    """names: N class names (the text written into the templates); templates: T strings with one '{}'
    -> [N, C] `model.build_text_embedding` of every class's T prompts (template-averaged, L2-normalised).

    A few classes at a time: 1000 classes x 80 templates would not fit in one forward.
    """
    per_chunk = max(1, max_texts // len(templates))
    parts = []
    for start in range(0, len(names), per_chunk):
        chunk = names[start:start + per_chunk]
        tokens = model.tokenize([t.format(name) for name in chunk for t in templates])
        parts.append(model.build_text_embedding(map_tokens(lambda t: t.view(len(chunk), len(templates), -1), tokens)))
    return torch.cat(parts)


@dataclass
class ClassPrompts:
    """The classes of a zero-shot classification set and the template sets it is evaluated with."""
    names: List[str]
    templates: Dict[str, List[str]]  # template set name -> its templates


def class_prompts(cfg: DictConfig) -> ClassPrompts:
    """Class names of data.dataset.val; template sets evaluate.cls.template and evaluate.cls.extra_templates."""
    extra = OmegaConf.select(cfg, 'evaluate.cls.extra_templates', default=['full', 'simple'])
    sets = dict.fromkeys([cfg.evaluate.cls.template, *extra])
    return ClassPrompts(val_class_names(cfg.data), {n: get_templates(n, 'evaluate.cls.template/extra_templates') for n in sets})


@torch.no_grad()
def evaluate_cls(model: torch.nn.Module, loader, prompts: ClassPrompts, device: torch.device, precision: Precision,
                 log_every: int = 0) -> Dict[str, dict]:
    """Zero-shot classification: top-1/top-5 accuracy (%) per template set, over all ranks' samples.

    model: the module (no DDP) with `encode_image` [B, 3, H, W] -> [B, C] and what `class_embeddings` calls;
    loader: batches {'image': [B, 3, H, W], 'target': [B], 'bad': counts}.
    Returns {template set: {'acc1', 'acc5', 'count'}} plus {'bad': counts} of skipped val samples.
    """
    was_training = model.training
    model.eval()
    names = sorted(prompts.templates)
    with precision.autocast():
        text = {n: class_embeddings(model, prompts.names, prompts.templates[n]) for n in names}
    # autocast may have computed them in half precision: normalise again in float32
    text = {n: F.normalize(t.float(), dim=-1) for n, t in text.items()}
    num_classes = len(prompts.names)
    k = min(5, num_classes)
    correct = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    count = torch.zeros(1, dtype=torch.float64, device=device)
    bad: Dict[str, dict] = {}
    for i, batch in enumerate(loader):
        merge_counts(bad, batch.get('bad') or {})
        if batch['image'] is None:
            continue
        image, target = batch['image'].to(device), batch['target'].to(device)
        if int(target.max()) >= num_classes or int(target.min()) < 0:
            raise ValueError(f'class label {int(target.max())} outside the {num_classes} class names: the val '
                             'shards and the class list (data.dataset.meta.<val>.classes_file) do not match')
        with precision.autocast():
            feat = model.encode_image(image)
        feat = F.normalize(feat.float(), dim=-1)
        for j, n in enumerate(names):
            top = (feat @ text[n].t()).topk(k, dim=-1).indices
            correct[j, 0] += (top[:, 0] == target).sum()
            correct[j, 1] += (top == target[:, None]).any(dim=-1).sum()
        count += target.numel()
        if log_every and i % log_every == 0:
            get_logger().info(f'Test [{i}] {int(count.item())} images on this rank')
    sum_over_ranks(correct)
    sum_over_ranks(count)
    model.train(was_training)
    total = max(count.item(), 1.0)
    results = {n: {'acc1': 100.0 * correct[j, 0].item() / total, 'acc5': 100.0 * correct[j, 1].item() / total,
                   'count': int(count.item())} for j, n in enumerate(names)}
    results['bad'] = sum_counts_over_ranks(bad)
    return results


def run_cls_eval(cfg: DictConfig, model, device, precision, val_loader, prompts: ClassPrompts, writer=None,
                 step: int = 0) -> dict:
    """Zero-shot accuracy per template set, logged (and written to `writer`)."""
    logger = get_logger()
    results = evaluate_cls(model, val_loader, prompts, device, precision)
    bad = results.pop('bad')
    val_name = ','.join(cfg.data.dataset.val)
    for name, r in results.items():
        logger.info(f"zero-shot {val_name} ({name} templates): acc1 {r['acc1']:.2f}  acc5 {r['acc5']:.2f}  "
                    f"over {r['count']} images")
        if writer is not None:
            writer.scalars({f'val/acc1_{name}': r['acc1'], f'val/acc5_{name}': r['acc5']}, step)
    if bad:
        logger.info(f'bad validation data: {format_counts(bad)}')
    return results
