"""Training-step benchmark: our GroupViT against the Hugging Face peer on the same weights and inputs, and the
full GroupViT / PGSeg configs under the published and the fast recipe."""
import os.path as osp
from typing import Dict, Sequence

import torch

from .hf_peer import build_peer
from .recipes import PUBLISHED, fast_recipe, peer_recipe
from .timing import interleaved, peak_memory_mib
from .train_step import build_ours, count_flops, load_model_cfg, make_inputs, our_step, peer_step

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {'groupvit': osp.join(ROOT, 'configs', 'group_vit_gcc_yfcc_30e.yml'),
           'pgseg': osp.join(ROOT, 'configs', 'pgseg_specific.yml')}
# transformers' GroupViT has no multi-label loss and no stochastic depth: without them ours computes its function
PEER_EQUIVALENT = ('multi_label=0', 'img_encoder.drop_path_rate=0.0')


def _img_size(cfg) -> int:
    return int(cfg.img_encoder.get('img_size', 224))


def _inputs(cfg, batch, device):
    return make_inputs(batch, _img_size(cfg), int(cfg.multi_label), int(cfg.text_encoder.context_length),
                       device=device)


@torch.no_grad()
def _seeded_loss(fn, seed=0) -> float:
    torch.manual_seed(seed)
    return float(fn())


def loss_check(ours, peer, image, text) -> dict:
    """Training-mode losses of ours and the peer on one batch, same weights, same Gumbel noise (float32)."""
    ours.train(), peer.train()
    caption = text[:, 0] if text.dim() == 3 else text
    mine = _seeded_loss(lambda: sum(ours.forward_train(image, text).values()))
    theirs = _seeded_loss(lambda: peer(input_ids=caption, pixel_values=image, return_loss=True).loss)
    return {'loss_ours': mine, 'loss_peer': theirs, 'loss_abs_diff': abs(mine - theirs)}


def _measure(steps: Dict[str, callable], batch, device, repeats, warmup, clock, flops: Dict[str, int]) -> dict:
    timing = interleaved(steps, device, repeats=repeats, warmup=warmup, clock=clock)
    out = {}
    for name, step in steps.items():
        seconds = timing[name]['median_s']
        out[name] = {'images_per_s': batch / seconds, 'step_s_median': seconds, 'step_s': timing[name]['times_s'],
                     'peak_mib': round(peak_memory_mib(step, device, before=step.drop_grads), 1)}
        if name in flops:
            out[name]['gflop_per_step'] = flops[name] / 1e9
            out[name]['achieved_tflops'] = flops[name] / seconds / 1e12
    return out


def peer_comparison(device, batch, repeats, warmup, clock, extra_opts: Sequence[str] = (), compile=False) -> dict:
    """Our GroupViT (peer-equivalent config) under the published and the fast recipe vs the peer out of the box
    (float32, torch's default AdamW, the full context) and the peer under the same levers as our fast recipe."""
    fast, peer_fast = fast_recipe(device.type, compile), peer_recipe(device.type)
    opts = [*extra_opts, *PEER_EQUIVALENT]
    cfg_pub = load_model_cfg(CONFIGS['groupvit'], opts + PUBLISHED.model_opts())
    cfg_fast = load_model_cfg(CONFIGS['groupvit'], opts + fast.model_opts())
    ours_pub, ours_fast = build_ours(cfg_pub, device), build_ours(cfg_fast, device)
    peer = build_peer(cfg_pub, ours_pub)
    image, text = _inputs(cfg_pub, batch, device)
    check = loss_check(ours_pub, peer, image, text)
    steps = {'ours_published': our_step(ours_pub, image, text, PUBLISHED),
             'ours_fast': our_step(ours_fast, image, text, fast),
             'peer': peer_step(peer, image, text, PUBLISHED),
             'peer_fast': peer_step(peer, image, text, peer_fast)}
    flops = {name: count_flops(steps[name]) for name in ('ours_published', 'ours_fast', 'peer')}
    result = _measure(steps, batch, device, repeats, warmup, clock, flops)
    ips = {k: v['images_per_s'] for k, v in result.items()}
    return {'variants': result, 'loss_check': check,
            'recipes': {'ours_published': PUBLISHED.describe(), 'ours_fast': fast.describe(),
                        'peer': PUBLISHED.describe(), 'peer_fast': peer_fast.describe()},
            'ratio_fast_vs_peer': ips['ours_fast'] / ips['peer'],
            'ratio_fast_vs_peer_fast': ips['ours_fast'] / ips['peer_fast'],
            'ratio_published_vs_peer': ips['ours_published'] / ips['peer']}


def full_configs(device, batch, repeats, warmup, clock, extra_opts: Dict[str, Sequence[str]], compile=False) -> dict:
    """The published GroupViT (multi-label 3) and PGSeg configs as they train: published vs fast recipe."""
    fast = fast_recipe(device.type, compile)
    out = {}
    for name, path in CONFIGS.items():
        models, steps = {}, {}
        for recipe in (PUBLISHED, fast):
            cfg = load_model_cfg(path, [*extra_opts.get(name, ()), *recipe.model_opts()])
            image, text = _inputs(cfg, batch, device)
            models[recipe.name] = build_ours(cfg, device)
            steps[f'{name}_{recipe.name}'] = our_step(models[recipe.name], image, text, recipe)
        flops = {key: count_flops(step) for key, step in steps.items()}
        result = _measure(steps, batch, device, repeats, warmup, clock, flops)
        result['speedup_fast_vs_published'] = (result[f'{name}_fast']['images_per_s']
                                               / result[f'{name}_published']['images_per_s'])
        out[name] = result
    return out

