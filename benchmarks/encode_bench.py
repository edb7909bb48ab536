"""Inference encoders against the peer: image embeddings per second and text embeddings per second (float32)."""
import torch

from .hf_peer import build_peer
from .timing import interleaved
from .train_bench import CONFIGS, PEER_EQUIVALENT, _inputs
from .train_step import build_ours, load_model_cfg, make_text, trim_context


def encode_comparison(device, batch, num_texts, repeats, warmup, clock, extra_opts=()) -> dict:
    """Ours (published attention, and fused attention) vs the peer on the same weights; texts are class prompts,
    encoded at the full context and trimmed after the last end-of-text token."""
    cfg = load_model_cfg(CONFIGS['groupvit'], [*extra_opts, *PEER_EQUIVALENT])
    fused_cfg = load_model_cfg(CONFIGS['groupvit'], [*extra_opts, *PEER_EQUIVALENT, 'img_encoder.fused_attn=true'])
    ours, fused = build_ours(cfg, device).eval(), build_ours(fused_cfg, device).eval()
    peer = build_peer(cfg, ours).eval()
    image, _ = _inputs(cfg, batch, device)
    text = make_text(num_texts, 0, int(cfg.text_encoder.context_length)).to(device)
    short = trim_context(text)
    with torch.no_grad():
        image_diff = (ours.encode_image(image) - peer.get_image_features(pixel_values=image).pooler_output).abs().max()
        text_diff = (ours.encode_text(text) - peer.get_text_features(input_ids=text).pooler_output).abs().max()
    run = torch.no_grad()
    image_steps = {'ours': run(lambda: ours.encode_image(image)),
                   'ours_fused_attn': run(lambda: fused.encode_image(image)),
                   'peer': run(lambda: peer.get_image_features(pixel_values=image))}
    text_steps = {'ours': run(lambda: ours.encode_text(text)), 'ours_trimmed': run(lambda: ours.encode_text(short)),
                  'peer': run(lambda: peer.get_text_features(input_ids=text))}
    out = {'image_max_abs_diff_vs_peer': float(image_diff), 'text_max_abs_diff_vs_peer': float(text_diff),
           'text_context': [int(text.shape[-1]), int(short.shape[-1])]}
    for kind, steps, n in (('image', image_steps, batch), ('text', text_steps, num_texts)):
        timing = interleaved(steps, device, repeats=repeats, warmup=warmup, clock=clock)
        rates = {name: n / t['median_s'] for name, t in timing.items()}
        out[kind] = {f'{name}_per_s': r for name, r in rates.items()}
        out[kind].update({f'ratio_{name}_vs_peer': r / rates['peer'] for name, r in rates.items() if name != 'peer'})
    return out
