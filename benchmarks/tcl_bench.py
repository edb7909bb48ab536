"""TCL's zero-shot segmentation per crop: ours (`TCL.zero_shot_logits`) against the published computation
(`models/tcl/reference.py`: PAMR by its convolution kernels, one crop at a time) on the same weights."""
import torch

from .seg_bench import VOC_CLASSES, _compare
from .train_bench import ROOT
from .train_step import build_ours, load_model_cfg

TCL_CONFIG = f'{ROOT}/configs/tcl.yml'
# a tiny CLIP for --quick: same code paths
QUICK_TCL_OPTS = ('clip_model={embed_dim: 32, image_resolution: 64, vision_layers: 2, vision_width: 64, '
                  'vision_patch_size: 16, context_length: 77, vocab_size: 49408, transformer_width: 64, '
                  'transformer_heads: 1, transformer_layers: 1}', 'ie_freeze=1')


@torch.no_grad()
def tcl_crop_comparison(device, repeats, warmup, clock, crop=448, pamr=True, kp_w=0.3, bg_thresh=0.4,
                        quick=False) -> dict:
    """One crop with VOC's 20 classes and TCL's protocol (PAMR, keep-prompt mix, constant background)."""
    from datasets.templates import get_templates
    from models.tcl.reference import published_crop_logits
    from segmentation.evaluation import zero_shot_logits
    from utils.zero_shot import class_embeddings
    model = build_ours(load_model_cfg(TCL_CONFIG, QUICK_TCL_OPTS if quick else ()), device).eval()
    for name, param in model.named_parameters():
        if name.endswith('gate.gate'):
            param.fill_(0.5)  # a trained decoder is not the identity the published zero-initialised gates give
    text = class_embeddings(model, list(VOC_CLASSES), get_templates('custom')).to(device)
    image = torch.randn(1, 3, crop, crop, generator=torch.Generator().manual_seed(0)).to(device)
    timing = dict(device=device, repeats=repeats, warmup=warmup, clock=clock)
    return {'crop_size': crop, 'num_classes': len(VOC_CLASSES) + 1, 'pamr': pamr, 'kp_w': kp_w,
            'crop': _compare(lambda: zero_shot_logits(model, image, text, True, bg_thresh, pamr=pamr, kp_w=kp_w),
                             lambda: published_crop_logits(model, image, text, True, bg_thresh, pamr, kp_w),
                             **timing)}
