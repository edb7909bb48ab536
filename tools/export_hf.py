"""Convert between this project's GroupViT/PGSeg checkpoints and a Hugging Face transformers `GroupViTModel` folder.

    python tools/export_hf.py CKPT OUT_DIR [--cfg CFG]          # ours -> transformers folder (save_pretrained)
    python tools/export_hf.py --import HF_DIR OUT_CKPT [--cfg CFG]   # transformers folder -> ours (+ OUT_CKPT.yml)

The exported folder holds config.json + model.safetensors (GroupViTModel), preprocessor_config.json (GroupViT's
ImageNet mean/std, a plain resize to the training size, no centre crop), the CLIP tokenizer (vocab.json and
merges.txt derived from the BPE file open_clip ships) and two side files that transformers ignores:
`pgseg_config.yml` (this project's config) and `pgseg_extra.safetensors` (weights transformers' GroupViT has no
place for: PGSeg's prototype modules and the multi-label temperature), so `--import` restores the checkpoint exactly.
"""
import argparse
import gzip
import json
import os
import os.path as osp
import re
import sys
from typing import Dict, List, Tuple

import torch
from omegaconf import DictConfig, OmegaConf

if __package__ in (None, ''):
    sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from utils.config import ConfigError, load_config  # noqa: E402

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROJECT_CONFIG = 'pgseg_config.yml'
EXTRA_WEIGHTS = 'pgseg_extra.safetensors'
DEFAULT_BASE_CONFIG = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'configs',
                               'group_vit_gcc_yfcc_30e.yml')


class ExportError(Exception):
    """A checkpoint, config or folder that cannot be converted; the message names it and why."""


# ---------------------------------------------------------------- key mapping
# (our pattern, transformers template): `{0}`, `{1}`, ... are the pattern's groups.
VISION_RULES = [
    (r'patch_embed\.proj\.(weight|bias)', 'embeddings.patch_embeddings.projection.{0}'),
    (r'patch_embed\.norm\.(weight|bias)', 'embeddings.layernorm.{0}'),
    (r'pos_embed', 'embeddings.position_embeddings'),
    (r'norm\.(weight|bias)', 'layernorm.{0}'),
    (r'layers\.(\d+)\.group_token', 'encoder.stages.{0}.group_token'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.norm([12])\.(weight|bias)', 'encoder.stages.{0}.layers.{1}.layer_norm{2}.{3}'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.mlp\.(fc[12])\.(weight|bias)', 'encoder.stages.{0}.layers.{1}.mlp.{2}.{3}'),
    (r'layers\.(\d+)\.blocks\.(\d+)\.attn\.proj\.(weight|bias)',
     'encoder.stages.{0}.layers.{1}.self_attn.out_proj.{2}'),
    (r'layers\.(\d+)\.downsample\.pre_assign_attn\.attn\.proj\.(weight|bias)',
     'encoder.stages.{0}.downsample.pre_assign_attn.attn.out_proj.{1}'),
    (r'layers\.(\d+)\.downsample\.((?:norm_tokens|norm_post_tokens|norm_x|norm_new_x|mlp_inter\.fc[12]|'
     r'mlp_channels\.fc[12]|pre_assign_attn\.(?:attn\.[qkv]_proj|norm2|norm_post|mlp\.fc[12])|'
     r'assign\.(?:[qkv]_proj|proj))\.(?:weight|bias))', 'encoder.stages.{0}.downsample.{1}'),
    (r'layers\.(\d+)\.group_projector\.(0\.(?:weight|bias)|1\.fc[12]\.(?:weight|bias))',
     'encoder.stages.{0}.group_projector.{1}'),
]
TEXT_RULES = [
    (r'token_embedding\.weight', 'embeddings.token_embedding.weight'),
    (r'positional_embedding', 'embeddings.position_embedding.weight'),
    (r'transformer\.resblocks\.(\d+)\.attn\.out_proj\.(weight|bias)', 'encoder.layers.{0}.self_attn.out_proj.{1}'),
    (r'transformer\.resblocks\.(\d+)\.ln_([12])\.(weight|bias)', 'encoder.layers.{0}.layer_norm{1}.{2}'),
    (r'transformer\.resblocks\.(\d+)\.mlp\.c_fc\.(weight|bias)', 'encoder.layers.{0}.mlp.fc1.{1}'),
    (r'transformer\.resblocks\.(\d+)\.mlp\.c_proj\.(weight|bias)', 'encoder.layers.{0}.mlp.fc2.{1}'),
    (r'ln_final\.(weight|bias)', 'final_layer_norm.{0}'),
]
PROJECTOR_RULES = [
    (r'linear_hidden\.0\.(weight|bias)', '0.{0}'),
    (r'linear_hidden\.1\.(weight|bias|running_mean|running_var|num_batches_tracked)', '1.{0}'),
    (r'linear_out\.(weight|bias)', '3.{0}'),
]
# one fused q/k/v tensor of ours -> three projections in transformers ({qkv} is q, k or v)
FUSED_RULES = [
    (r'layers\.(\d+)\.blocks\.(\d+)\.attn\.qkv\.(weight|bias)',
     'encoder.stages.{0}.layers.{1}.self_attn.{qkv}_proj.{2}'),
    (r'transformer\.resblocks\.(\d+)\.attn\.in_proj_(weight|bias)', 'encoder.layers.{0}.self_attn.{qkv}_proj.{1}'),
]
SECTIONS = [('img_encoder.', 'vision_model.', VISION_RULES), ('text_encoder.', 'text_model.', TEXT_RULES),
            ('img_projector.', 'visual_projection.', PROJECTOR_RULES),
            ('text_projector.', 'text_projection.', PROJECTOR_RULES), ('', '', [(r'logit_scale', 'logit_scale')])]
PROJECTOR_CONV = re.compile(r'(img|text)_projector\.(linear_hidden\.0|linear_out)\.weight')


def hf_name(name: str):
    """Our weight name -> transformers name (str), the three q/k/v names (tuple) for a fused tensor, or None."""
    for ours_prefix, hf_prefix, rules in SECTIONS:
        if not name.startswith(ours_prefix):
            continue
        local = name[len(ours_prefix):]
        for pattern, template in rules:
            m = re.fullmatch(pattern, local)
            if m:
                return hf_prefix + template.format(*m.groups())
        for pattern, template in FUSED_RULES:
            m = re.fullmatch(pattern, local)
            if m:
                return tuple(hf_prefix + template.format(*m.groups(), qkv=qkv) for qkv in 'qkv')
    return None


def to_hf_state(state: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Our model state dict -> (transformers GroupViTModel state dict, our weights it has no place for)."""
    hf, extra = {}, {}
    for name, tensor in state.items():
        target = hf_name(name)
        if target is None:
            extra[name] = tensor
        elif isinstance(target, tuple):
            hf.update(zip(target, tensor.chunk(3, dim=0)))
        else:
            hf[target] = tensor.squeeze(-1) if PROJECTOR_CONV.fullmatch(name) else tensor
    return hf, extra


def from_hf_state(hf: Dict[str, torch.Tensor], extra: Dict[str, torch.Tensor],
                  our_names: List[str]) -> Dict[str, torch.Tensor]:
    """Inverse of `to_hf_state` for a model whose weight names are `our_names`; ExportError names what is missing."""
    state, missing = {}, []
    for name in our_names:
        target = hf_name(name)
        sources = () if target is None else target if isinstance(target, tuple) else (target, )
        if target is None and name in extra:
            state[name] = extra[name]
        elif sources and all(s in hf for s in sources):
            tensor = torch.cat([hf[s] for s in sources]) if isinstance(target, tuple) else hf[target]
            state[name] = tensor.unsqueeze(-1) if PROJECTOR_CONV.fullmatch(name) else tensor
        else:
            missing.append(' + '.join(sources) or f'{name} (in {EXTRA_WEIGHTS})')
    if missing:
        raise ExportError(f'{len(missing)} weights missing, e.g. {", ".join(missing[:3])}')
    return state


# ---------------------------------------------------------------- configs
def _get(node, key, default):
    value = node.get(key, default) if node is not None else default
    return default if value is None else value


def hf_config(model_cfg: DictConfig, state: Dict[str, torch.Tensor]):
    """Our `model` config section -> transformers GroupViTConfig; ExportError when transformers cannot hold it."""
    from transformers import GroupViTConfig
    img = OmegaConf.to_container(model_cfg.img_encoder, resolve=True)
    txt = OmegaConf.to_container(model_cfg.text_encoder, resolve=True)
    _check_exportable(model_cfg, img, state)
    embed_dim = _get(img, 'embed_dim', 384)
    depths = list(_get(img, 'depths', (6, 3, 3)))
    heads = list(_get(img, 'num_heads', (6, 6, 6)))
    output_groups = list(_get(img, 'num_output_groups', (64, 8)))
    width = txt['width']
    vision = dict(hidden_size=embed_dim, intermediate_size=int(embed_dim * _get(img, 'mlp_ratio', 4.0)),
                  num_hidden_layers=sum(depths), depths=depths,
                  num_group_tokens=list(_get(img, 'num_group_tokens', (64, 8, 0))),
                  num_output_groups=output_groups + output_groups[-1:], num_attention_heads=heads[0],
                  image_size=_get(img, 'img_size', 224), patch_size=_get(img, 'patch_size', 16),
                  num_channels=_get(img, 'in_chans', 3), hidden_act='gelu', assign_eps=1.0, assign_mlp_ratio=[0.5, 4])
    text = dict(vocab_size=txt['vocab_size'], hidden_size=width, intermediate_size=4 * width,
                num_hidden_layers=txt['layers'], num_attention_heads=max(width // 64, 1),
                max_position_embeddings=txt['context_length'], hidden_act='quick_gelu',
                bos_token_id=txt['vocab_size'] - 2, eos_token_id=txt['vocab_size'] - 1,
                pad_token_id=txt['vocab_size'] - 1)
    return GroupViTConfig(text_config=text, vision_config=vision, projection_dim=_get(model_cfg, 'output_dim', 256),
                          projection_intermediate_dim=state['img_projector.linear_hidden.0.weight'].shape[0],
                          logit_scale_init_value=float(state['logit_scale']))


def _check_exportable(model_cfg, img: dict, state) -> None:
    """Everything transformers' GroupViT hard-codes must hold for our model (else the export would be wrong)."""
    problems = []
    if _get(model_cfg, 'proj_num_layers', 2) != 2:
        problems.append('proj_num_layers must be 2 (transformers has a fixed Linear-BN-ReLU-Linear projection)')
    if 'img_projector.linear_hidden.0.weight' not in state:
        problems.append('the checkpoint has no image projector')
    if img.get('type') not in ('GroupViT', 'PGSeg'):
        problems.append(f"img_encoder.type {img.get('type')!r} is not GroupViT/PGSeg")
    checks = [('stem', 'patch', 'a convolutional stem'), ('patch_norm', True, 'no patch norm'),
              ('hard_assignment', True, 'soft assignment'), ('qkv_bias', True, 'no qkv bias'),
              ('qk_scale', None, 'a custom qk_scale'), ('mlp_ratio', 4.0, 'an mlp_ratio other than 4'),
              ('num_classes', 0, 'a classification head')]
    for key, expected, what in checks:
        if img.get(key, expected) != expected:
            problems.append(f'img_encoder has {what} ({key}={img[key]!r})')
    if len(set(img.get('embed_factors', (1,)))) != 1 or img.get('embed_factors', (1,))[0] != 1:
        problems.append('embed_factors must all be 1 (transformers keeps one width for every stage)')
    if len(set(img.get('num_heads', (6,)))) != 1:
        problems.append('num_heads must be the same in every stage')
    tokens, groups = img.get('num_group_tokens', (64, 8, 0)), img.get('num_output_groups', (64, 8))
    if any(tokens[i] != groups[i] for i in range(len(groups)) if tokens[i + 1] > 0):
        problems.append('num_output_groups must equal num_group_tokens of the stage before a group projector '
                        f'(transformers sizes the projector by num_output_groups); got {tokens} / {groups}')
    if problems:
        raise ExportError('cannot export to transformers GroupViTModel: ' + '; '.join(problems))


def model_cfg_from_hf(config) -> DictConfig:
    """transformers GroupViTConfig -> our `model` section (plain GroupViT)."""
    v, t = config.vision_config, config.text_config
    img = dict(type='GroupViT', img_size=v.image_size, patch_size=v.patch_size, in_chans=v.num_channels,
               embed_dim=v.hidden_size, depths=list(v.depths), num_heads=[v.num_attention_heads] * len(v.depths),
               num_group_tokens=list(v.num_group_tokens), num_output_groups=list(v.num_output_groups[:-1]),
               mlp_ratio=v.intermediate_size / v.hidden_size, drop_path_rate=0.0)
    txt = dict(type='TextTransformer', context_length=t.max_position_embeddings, width=t.hidden_size,
               layers=t.num_hidden_layers, vocab_size=t.vocab_size)
    return OmegaConf.create(dict(type='MultiLabelContrastive', img_encoder=img, text_encoder=txt,
                                 output_dim=config.projection_dim, proj_num_layers=2))


# ---------------------------------------------------------------- tokenizer and preprocessor
def write_tokenizer(out_dir: str, context_length: int) -> List[str]:
    """vocab.json + merges.txt of the CLIP BPE (derived from open_clip's file), saved as a CLIPTokenizer."""
    from transformers import CLIPTokenizer

    from datasets.tokenizer import NUM_MERGES, default_bpe_path, get_tokenizer
    tok = get_tokenizer()
    with gzip.open(default_bpe_path(), 'rt', encoding='utf-8') as f:
        merges = f.read().split('\n')[1:NUM_MERGES + 1]
    vocab_path, merges_path = osp.join(out_dir, 'vocab.json'), osp.join(out_dir, 'merges.txt')
    with open(vocab_path, 'w', encoding='utf-8') as f:
        json.dump(tok.encoder, f, ensure_ascii=False)
    with open(merges_path, 'w', encoding='utf-8') as f:
        f.write('#version: 0.2\n' + '\n'.join(merges) + '\n')
    hf_tok = CLIPTokenizer(vocab=vocab_path, merges=merges_path, model_max_length=context_length)
    return list(hf_tok.save_pretrained(out_dir))


def write_preprocessor(out_dir: str, image_size: int) -> None:
    """GroupViT's inference normalisation: ImageNet mean/std, resize to the training size, no centre crop."""
    from transformers import CLIPImageProcessor
    size = {'height': image_size, 'width': image_size}
    CLIPImageProcessor(do_resize=True, size=size, resample=2, do_center_crop=False, crop_size=size, do_rescale=True,
                       rescale_factor=1 / 255, do_normalize=True, image_mean=list(IMAGENET_MEAN),
                       image_std=list(IMAGENET_STD), do_convert_rgb=True).save_pretrained(out_dir)


# ---------------------------------------------------------------- export / import
def _read_ckpt(path: str) -> Tuple[Dict[str, torch.Tensor], object]:
    try:
        content = load_checkpoint(path)
    except (CheckpointError, OSError) as e:
        raise ExportError(str(e)) from None
    return content['model'], content.get('config')


def _resolve_cfg(cfg_path, stored) -> DictConfig:
    if cfg_path:
        try:
            return load_config(cfg_path)
        except ConfigError as e:
            raise ExportError(str(e)) from None
    if stored is not None and OmegaConf.select(OmegaConf.create(stored), 'model') is not None:
        return OmegaConf.create(stored)
    raise ExportError('the checkpoint stores no config: pass --cfg with the config it was trained with')


def export(ckpt: str, out_dir: str, cfg_path: str = None, check: bool = True) -> dict:
    """Write a transformers GroupViTModel folder; returns a summary dict (dropped names, check differences)."""
    from safetensors.torch import save_file
    from transformers import GroupViTModel
    state, stored = _read_ckpt(ckpt)
    cfg = _resolve_cfg(cfg_path, stored)
    state = {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}
    config = hf_config(cfg.model, state)
    hf_state, extra = to_hf_state(state)
    model = GroupViTModel(config).eval()
    missing, unexpected = model.load_state_dict(hf_state, strict=False)
    if missing or unexpected:
        raise ExportError(f'{ckpt}: weights do not fit GroupViTModel (missing {missing[:5]}, unexpected '
                          f'{unexpected[:5]}); is --cfg the config this checkpoint was trained with?')
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    write_preprocessor(out_dir, config.vision_config.image_size)
    write_tokenizer(out_dir, config.text_config.max_position_embeddings)
    OmegaConf.save(cfg, osp.join(out_dir, PROJECT_CONFIG))
    extra_path = osp.join(out_dir, EXTRA_WEIGHTS)
    if extra:
        save_file({k: v.contiguous() for k, v in extra.items()}, extra_path)
    elif osp.exists(extra_path):
        os.remove(extra_path)
    summary = {'dropped': sorted(extra), 'lossy': any('downsample_spatial' in k for k in extra)}
    if check:
        summary.update(compare_embeddings(cfg.model, state, model))
    return summary


def _as_tuple(name):
    return () if name is None else name if isinstance(name, tuple) else (name, )


def build_ours(model_cfg, state: Dict[str, torch.Tensor]):
    from models import build_model
    model = build_model(model_cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


@torch.no_grad()
def compare_embeddings(model_cfg, state, hf_model, seed: int = 0) -> dict:
    """Max relative difference of image and text embeddings between ours and transformers on one random input."""
    ours = build_ours(model_cfg, state)
    v = hf_model.config.vision_config
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(2, v.num_channels, v.image_size, v.image_size, generator=gen)
    from datasets import tokenize
    tokens = tokenize(['a photo of a dog.', 'grass'], hf_model.config.text_config.max_position_embeddings)
    pairs = {'image': (ours.encode_image(image), hf_model.get_image_features(pixel_values=image).pooler_output),
             'text': (ours.encode_text(tokens), hf_model.get_text_features(input_ids=tokens).pooler_output)}
    return {f'{k}_rel_diff': float((a - b).abs().max() / a.abs().max().clamp_min(1e-12)) for k, (a, b) in pairs.items()}


def import_hf(hf_dir: str, out_ckpt: str, cfg_path: str = None) -> Tuple[str, str]:
    """transformers GroupViTModel folder -> our checkpoint at `out_ckpt` and its full config next to it."""
    from transformers import GroupViTConfig
    if not osp.isfile(osp.join(hf_dir, 'config.json')):
        raise ExportError(f'{hf_dir}: no config.json (not a transformers model folder)')
    hf_state = _read_hf_weights(hf_dir)
    cfg = _import_cfg(hf_dir, cfg_path, GroupViTConfig.from_pretrained(hf_dir))
    from models import build_model
    model = build_model(cfg.model).eval()
    try:
        state = from_hf_state(hf_state, _read_extra(hf_dir), list(model.state_dict()))
        model.load_state_dict(state, strict=True)
    except (ExportError, RuntimeError) as e:
        raise ExportError(f'{hf_dir}: weights do not fit the model of its config: {str(e).splitlines()[0]}') from None
    unused = sorted(set(hf_state) - {n for k in state for n in _as_tuple(hf_name(k))})
    if unused:
        raise ExportError(f'{hf_dir}: {len(unused)} transformers weights have no place in our model, e.g. {unused[:3]}')
    cfg_out = osp.splitext(out_ckpt.rstrip('/'))[0] + '.yml'
    save_checkpoint(out_ckpt, model.state_dict(), extra={'config': cfg})
    OmegaConf.save(cfg, cfg_out)
    return out_ckpt, cfg_out


def _read_hf_weights(hf_dir: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = osp.join(hf_dir, 'model.safetensors')
    if not osp.isfile(path):
        raise ExportError(f'{hf_dir}: no model.safetensors (sharded or .bin folders: load and re-save them with '
                          'GroupViTModel.from_pretrained(...).save_pretrained(dir) first)')
    return load_file(path)


def _read_extra(hf_dir: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    path = osp.join(hf_dir, EXTRA_WEIGHTS)
    return load_file(path) if osp.isfile(path) else {}


def _import_cfg(hf_dir: str, cfg_path, hf_cfg) -> DictConfig:
    """Our full config: --cfg, else the folder's pgseg_config.yml, else a default config whose model is derived
    from the transformers config."""
    side = osp.join(hf_dir, PROJECT_CONFIG)
    if cfg_path or osp.isfile(side):
        try:
            return load_config(cfg_path or side)
        except ConfigError as e:
            raise ExportError(str(e)) from None
    cfg = load_config(DEFAULT_BASE_CONFIG)
    cfg.model = model_cfg_from_hf(hf_cfg)
    cfg.data.text_aug.multi_label = 0
    return cfg


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('src', help='our checkpoint (export) or a transformers folder (--import)')
    parser.add_argument('dst', help='output folder (export) or output checkpoint .pth (--import)')
    parser.add_argument('--import', dest='do_import', action='store_true',
                        help='convert a transformers GroupViTModel folder back to our checkpoint')
    parser.add_argument('--cfg', help='config of the checkpoint (default: the one stored in it / in the folder)')
    parser.add_argument('--no-check', action='store_true', help='skip comparing embeddings after the export')
    return parser.parse_args(argv)


def module_of(name: str) -> str:
    """'img_encoder.layers.0.downsample_spatial.mu' -> 'img_encoder.layers.*.downsample_spatial';
    'text_encoder.Atten.mu' -> 'text_encoder.Atten'; a top-level tensor stays as it is."""
    m = re.match(r'img_encoder\.layers\.\d+\.([^.]+)', name)
    if m:
        return f'img_encoder.layers.*.{m.group(1)}'
    return '.'.join(name.split('.')[:2])


def _report_export(args, summary) -> None:
    print(f'wrote transformers GroupViTModel folder {args.dst}')
    if summary['dropped']:
        groups = sorted({module_of(k) for k in summary['dropped']})
        print(f'not in transformers GroupViTModel ({len(summary["dropped"])} tensors, kept in {EXTRA_WEIGHTS} for '
              f'--import): {", ".join(groups[:8])}{" ..." if len(groups) > 8 else ""}')
    if summary['lossy']:
        print('WARNING: PGSeg adds its prototype reconstruction (downsample_spatial) to the image tokens; '
              'transformers GroupViTModel has no such module, so its image embeddings and groups differ from '
              "PGSeg's. Text embeddings are exact. Use --import to get the PGSeg model back.")
    for key in ('image_rel_diff', 'text_rel_diff'):
        if key in summary:
            print(f'check: {key.replace("_rel_diff", "")} embeddings, max relative difference {summary[key]:.2e}')


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.do_import:
            ckpt, cfg_out = import_hf(args.src, args.dst, args.cfg)
            print(f'wrote checkpoint {ckpt} and its config {cfg_out}')
        else:
            _report_export(args, export(args.src, args.dst, args.cfg, check=not args.no_check))
    except ExportError as e:
        raise SystemExit(f'export_hf: {e}')


if __name__ == '__main__':
    main()
