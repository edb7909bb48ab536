"""Zero-shot segmentation inference: our per-crop decoder and sliding window against the published protocol.

Ours: `ZeroShotSegmentor.slide_inference` (one encoder pass per crop, `crop_batch` crops encoded together) and
its resize to the original image of the classes that can win. Published: `published_protocol_logits` crop by crop
(two encoder passes, every stage's group map resized, one-hot products) over the same windows, then, as mmseg 0.x
does, every class map resized to the original image at once, softmax and arg-max.
"""
import torch
import torch.nn.functional as F

from .timing import interleaved, peak_memory_mib
from .train_bench import CONFIGS, ROOT
from .train_step import build_ours, load_model_cfg

VOC_CLASSES = ('aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow',
               'diningtable', 'dog', 'horse', 'motorbike', 'person', 'pottedplant', 'sheep', 'sofa', 'train',
               'tvmonitor')


def protocol_cfg(crop: int, stride: int, crop_batch: int) -> dict:
    from mmengine.config import Config
    cfg = Config.fromfile(f'{ROOT}/segmentation/configs/_base_/zero_shot.py').test_cfg
    cfg.update(crop_size=(crop, crop), stride=(stride, stride), crop_batch=crop_batch)
    return cfg


def protocol_size(h: int, w: int, short: int) -> tuple:
    """mmseg Resize(scale=(2048, short), keep_ratio=True) of an h x w image -> (h', w')."""
    scale = min(2048 / max(h, w), short / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def published_slide(model, img, text_embedding, cfg) -> torch.Tensor:
    """img: [1, 3, H, W] -> [1, N + 1, H, W]: the published per-crop protocol over mmseg's windows, each crop's
    logits zero-padded to the image size and added, as mmseg's slide_inference does."""
    from models.groupvit.reference import published_protocol_logits
    from segmentation.evaluation import slide_windows
    h, w = img.shape[-2:]
    preds = img.new_zeros((1, text_embedding.shape[0] + 1, h, w))
    count = img.new_zeros((1, 1, h, w))
    for y1, y2, x1, x2 in slide_windows(h, w, cfg.crop_size, cfg.stride):
        crop = published_protocol_logits(model, img[:, :, y1:y2, x1:x2], text_embedding, True, cfg.bg_thresh,
                                         cfg.top_k)
        preds += F.pad(crop, (x1, w - x2, y1, h - y2))
        count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def published_to_original(logits, size) -> torch.Tensor:
    """Every class map resized to the original image at once, softmax over classes, arg-max (the post-processing
    of mmseg 0.x, which the published code runs on)."""
    return F.softmax(F.interpolate(logits, size=size, mode='bilinear', align_corners=False), dim=1).argmax(dim=1)


def decoder_like_logits(num_classes=151, hw=(45, 67), regions=(5, 7), active=12, seed=0):
    """[num_classes, *hw] like the zero-shot decoder's output of a trained model: background channel 0 (0 / 1),
    then `active` classes (the crops' top five) with positive scores that differ between regions (groups), every
    other class exactly 0. Random weights give one winning class everywhere, which would flatter the resize."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.zeros(num_classes, *hw)
    region = F.interpolate(torch.rand(1, 1, *regions, generator=g), size=hw, mode='nearest')[0, 0]
    classes = 1 + torch.randperm(num_classes - 1, generator=g)[:active]
    for r in region.unique():
        rows, cols = (region == r).nonzero(as_tuple=True)
        logits[classes[:, None], rows, cols] = torch.rand(active, 1, generator=g) ** 3
    logits[0] = (logits[1:].max(dim=0).values < 0.2).float()
    return logits


def _text(model, num_classes, device):
    """VOC's class embeddings, or random unit vectors for a larger class count (only the count matters there)."""
    from datasets.templates import get_templates
    from utils.zero_shot import class_embeddings
    if num_classes == len(VOC_CLASSES):
        return class_embeddings(model, list(VOC_CLASSES), get_templates('simple')).to(device)
    g = torch.Generator().manual_seed(1)
    return F.normalize(torch.randn(num_classes, model.img_projector.linear_out.out_channels, generator=g), dim=-1).to(
        device)


def _compare(ours, published, device, repeats, warmup, clock, labels=lambda x: x.argmax(1)) -> dict:
    """Equality of the outputs (logits, then labels), interleaved timing and the peak memory of each.
    Keys keep the names ours / published even when `published` is another of our paths."""
    a, b = ours(), published()
    out = {'max_abs_diff': float((a.float() - b.float()).abs().max()) if a.is_floating_point() else None,
           'label_mismatch': int((labels(a) != labels(b)).sum()), 'pixels': int(labels(a).numel())}
    timing = interleaved({'ours': ours, 'published': published}, device, repeats=repeats, warmup=warmup, clock=clock)
    out.update({f'{k}_s': v['median_s'] for k, v in timing.items()})
    out.update(ours_peak_mib=round(peak_memory_mib(ours, device), 1),
               published_peak_mib=round(peak_memory_mib(published, device), 1),
               speedup=timing['published']['median_s'] / timing['ours']['median_s'])
    return out


@torch.no_grad()
def seg_comparison(device, repeats, warmup, clock, crop=448, stride=224, crop_batch=8, voc_hw=(375, 500),
                   large_hw=(2000, 3000), large_classes=150, extra_opts=()) -> dict:
    """Per crop, per VOC-sized image (sliding window) and per large image with many classes (sliding window and
    the resize to the original size): ours vs the published protocol; plus fused attention in float32 (the same
    logits up to float rounding: its largest difference is reported) and our fast path (test_cfg.precision
    'bfloat16' with fused attention), which changes the logits: its label differences are counted."""
    from models.groupvit.reference import published_protocol_logits
    from segmentation.evaluation import ZeroShotSegmentor, zero_shot_logits
    from segmentation.evaluation.resize import resized_argmax, winning_candidates
    cfg = protocol_cfg(crop, stride, crop_batch)
    model = build_ours(load_model_cfg(CONFIGS['groupvit'], extra_opts), device).eval()
    fused = build_ours(load_model_cfg(CONFIGS['groupvit'], [*extra_opts, 'img_encoder.fused_attn=true']),
                       device).eval()
    text = _text(model, len(VOC_CLASSES), device)
    many = _text(model, large_classes, device)
    g = torch.Generator().manual_seed(0)
    crop_img = torch.randn(1, 3, crop, crop, generator=g).to(device)
    voc = torch.randn(1, 3, *protocol_size(*voc_hw, crop), generator=g).to(device)
    large = torch.randn(1, 3, *protocol_size(*large_hw, crop), generator=g).to(device)
    segmentor = ZeroShotSegmentor(model, text, True, cfg).to(device).eval()
    fused_segmentor = ZeroShotSegmentor(fused, text, True, cfg).to(device).eval()
    bf16_segmentor = ZeroShotSegmentor(fused, text, True, {**cfg, 'precision': 'bfloat16'}).to(device).eval()
    large_segmentor = ZeroShotSegmentor(model, many, True, cfg).to(device).eval()

    # the resize to the original size alone: 15 classes that win somewhere (3 crops x top 5), and the worst case
    # for ours, where every class may win (dense random logits)
    sparse = decoder_like_logits(large_classes + 1, large.shape[-2:], (12, 18), active=15).to(device)
    dense = torch.randn(large_classes + 1, *large.shape[-2:], generator=g).to(device)

    timing = dict(device=device, repeats=repeats, warmup=warmup, clock=clock)
    return {
        'crop_size': crop, 'stride': stride, 'crop_batch': crop_batch, 'num_classes': len(VOC_CLASSES) + 1,
        'voc_input_hw': list(voc.shape[-2:]), 'voc_original_hw': list(voc_hw), 'large_original_hw': list(large_hw),
        'large_input_hw': list(large.shape[-2:]), 'large_num_classes': large_classes + 1,
        'crop': _compare(lambda: zero_shot_logits(model, crop_img, text, True, cfg.bg_thresh, top_k=cfg.top_k),
                         lambda: published_protocol_logits(model, crop_img, text, True, cfg.bg_thresh, cfg.top_k),
                         **timing),
        'voc_image': _compare(lambda: segmentor.slide_inference(voc, None),
                              lambda: published_slide(model, voc, text, cfg), **timing),
        # the whole per-image cost: sliding window, then labels at the original size
        'voc_image_labels': _compare(lambda: resized_argmax(segmentor.slide_inference(voc, None)[0], voc_hw),
                                     lambda: published_to_original(published_slide(model, voc, text, cfg), voc_hw),
                                     **timing, labels=lambda x: x),
        'large_image': _compare(
            lambda: resized_argmax(large_segmentor.slide_inference(large, None)[0], large_hw),
            lambda: published_to_original(published_slide(model, large, many, cfg), large_hw),
            **{**timing, 'repeats': max(1, repeats // 2)}, labels=lambda x: x),
        'large_image_winning_classes': len(winning_candidates(large_segmentor.slide_inference(large, None)[0])),
        'resize_decoder_like': _compare(lambda: resized_argmax(sparse, large_hw),
                                        lambda: published_to_original(sparse[None], large_hw), **timing,
                                        labels=lambda x: x),
        'resize_decoder_like_winning_classes': len(winning_candidates(sparse)),
        'resize_dense_worst_case': _compare(lambda: resized_argmax(dense, large_hw),
                                            lambda: published_to_original(dense[None], large_hw),
                                            **{**timing, 'repeats': 1, 'warmup': 0}, labels=lambda x: x),
        # speed relative to our default path; times voc_image's speedup gives the speedup over the published one
        'voc_image_fused_fp32_vs_ours': _compare(lambda: fused_segmentor.slide_inference(voc, None),
                                                 lambda: segmentor.slide_inference(voc, None), **timing),
        'voc_image_fast_vs_ours': _compare(lambda: bf16_segmentor.slide_inference(voc, None),
                                           lambda: segmentor.slide_inference(voc, None), **timing),
    }
