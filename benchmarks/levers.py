"""One lever at a time: each variant is the published recipe with one or two levers switched on, run interleaved
with the published recipe itself on the peer-equivalent GroupViT (the numbers behind benchmarks/NOTES.md)."""
import time
from dataclasses import replace

import torch

from .recipes import PUBLISHED
from .timing import interleaved
from .train_bench import CONFIGS, PEER_EQUIVALENT, _inputs
from .train_step import build_ours, load_model_cfg, our_step

BF16 = replace(PUBLISHED, amp_dtype=torch.bfloat16)
LEVERS = {
    'fused_attn': replace(PUBLISHED, fused_attn=True),
    'fused_adamw': replace(PUBLISHED, fused_adamw=True),
    'trim_context': replace(PUBLISHED, trim=True),
    'channels_last_patch_embed': replace(PUBLISHED, channels_last=True),
    'fp16_autocast': replace(PUBLISHED, amp_dtype=torch.float16),
    'bf16_autocast': BF16,
    'bf16_autocast+fused_attn': replace(BF16, fused_attn=True),
    'bf16_autocast+math_sdpa': replace(BF16, math_sdpa=True),
}


def lever_comparison(device, batch, repeats, warmup, clock, extra_opts=(), compile=False) -> dict:
    """-> {lever: speedup over the published recipe (images/s ratio of medians)}, plus the raw medians."""
    levers = {name: replace(recipe, name=name) for name, recipe in LEVERS.items()}
    if compile:
        levers['compile'] = replace(PUBLISHED, name='compile', compile=True)
    opts = [*extra_opts, *PEER_EQUIVALENT]
    steps, models = {}, {}
    image = text = None
    for name, recipe in {'published': PUBLISHED, **levers}.items():
        cfg = load_model_cfg(CONFIGS['groupvit'], opts + recipe.model_opts())
        if image is None:
            image, text = _inputs(cfg, batch, device)
        key = (recipe.fused_attn, recipe.channels_last)
        if key not in models:
            models[key] = build_ours(cfg, device)
        steps[name] = our_step(models[key], image, text, recipe)
    if compile:
        start = time.time()
        steps['compile']()
        compile_s = time.time() - start
    timing = interleaved(steps, device, repeats=repeats, warmup=warmup, clock=clock)
    base = timing['published']['median_s']
    out = {'batch': batch, 'step_s_median': {k: v['median_s'] for k, v in timing.items()},
           'speedup_vs_published': {k: base / v['median_s'] for k, v in timing.items() if k != 'published'},
           'recipes': {k: r.describe() for k, r in levers.items()}}
    if compile:
        out['compile_first_call_s'] = compile_s
    return out
