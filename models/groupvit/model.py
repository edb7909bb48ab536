"""GroupViT as a method: image and text encoders, projectors, the InfoNCE and multi-label losses, the encode_* API
and the per-crop zero-shot segmentation of its groups."""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank, get_world_size

from ..base import GroupView, SegmentationMethod
from ..builder import MODELS
from ..layers import ProjectMLP
from ..superpixel_kl import superpixel_kl_loss
from . import segmentation


def soft_cross_entropy(logits, target):
    """Mean over rows of -sum(target * log_softmax(logits)). logits, target: [N, M]"""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@MODELS.register_module()
class MultiLabelContrastive(SegmentationMethod):
    """GroupViT (Xu et al., CVPR 2022). Arguments mirror `model` in the configs. With `multi_label` = k > 0 the text
    input is [B, 1 + k, L]: the caption, then k prompted nouns, and a multi-label loss pulls each image towards its
    k prompts. `multi_label_match`: what a prompt is matched with, 'image' (published: the image embedding, the
    average of the final groups) or 'best_group' (not in GroupViT; the toy emergence search: its best final group,
    so that single groups learn to name their content).

    The published configs name this class for every GroupViT-family model; the image encoder's type picks the
    method class (`MultiLabelContrastive.variant_for`), e.g. PGSeg's.
    """

    variants: Dict[str, type] = {}

    @classmethod
    def variant_for(cls, img_encoder_type: str):
        """Class decorator: the method class built when `model.img_encoder.type` is `img_encoder_type`."""
        def register(variant):
            cls.variants[img_encoder_type] = variant
            return variant
        return register

    def __new__(cls, img_encoder=None, *args, **kwargs):
        if cls is MultiLabelContrastive and img_encoder is not None:
            cls = cls.variants.get(dict(img_encoder).get('type'), cls)
        return super().__new__(cls)

    def __init__(self, img_encoder, text_encoder, output_dim=256, contrast_temperature=0.07, proj_num_layers=2,
                 multi_label=0, share_temperature=False, multi_label_loss_weight=1.0, superpixel_kl_weight=0.0,
                 multi_label_match='image'):
        super().__init__()
        if multi_label_match not in ('image', 'best_group'):
            raise ValueError(f"multi_label_match must be 'image' or 'best_group', got {multi_label_match!r}")
        self.multi_label_match = multi_label_match
        self.img_encoder = MODELS.build(img_encoder)
        self.text_encoder = self.build_text_encoder(text_encoder)
        self.contrast_temperature = contrast_temperature
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / contrast_temperature))
        self.proj_num_layers = proj_num_layers
        self.multi_label = multi_label
        if proj_num_layers > 0:
            self.img_projector = ProjectMLP(self.img_encoder.width, num_layers=proj_num_layers, out_dim=output_dim,
                                            sync_bn=True)
            self.text_projector = ProjectMLP(self.text_encoder.width, num_layers=proj_num_layers,
                                             out_dim=output_dim, sync_bn=True)
        else:
            self.img_projector = nn.Identity()
            self.text_projector = nn.Identity()
        self.share_temperature = share_temperature
        if self.with_multi_label and not share_temperature:
            self.multi_label_logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / contrast_temperature))
        self.multi_label_loss_weight = multi_label_loss_weight
        # > 0: SegCLIP's superpixel KL loss on the first grouping stage's hard assignment (needs seg_labels)
        self.superpixel_kl_weight = superpixel_kl_weight

    def build_text_encoder(self, cfg) -> nn.Module:
        return MODELS.build(cfg)

    @property
    def with_multi_label(self):
        return self.multi_label > 0

    @property
    def context_length(self) -> int:
        return self.text_encoder.context_length

    @property
    def patch_size(self) -> int:
        return self.img_encoder.patch_size

    def loss(self, image_x, text_x):
        """Symmetric InfoNCE over the global batch. image_x, text_x: [B, C] (this rank's part)."""
        B = image_x.shape[0]
        labels = torch.arange(B, device=image_x.device) + B * get_rank()
        image_x = F.normalize(image_x, dim=-1)
        text_x = F.normalize(text_x, dim=-1)
        logit_scale = torch.clamp(self.logit_scale.exp(), max=100)
        loss_img = F.cross_entropy(image_x @ all_gather_with_grad(text_x).t() * logit_scale, labels)
        loss_text = F.cross_entropy(text_x @ all_gather_with_grad(image_x).t() * logit_scale, labels)
        return 0.5 * (loss_img + loss_text)

    def _own_targets(self, rows, cols, B, like):
        """Soft targets [B*rows, world*B*cols]: each row spreads mass 1 over its own image's `cols` columns."""
        own = torch.eye(B, dtype=like.dtype, device=like.device).repeat_interleave(rows, 0)
        own = own.repeat_interleave(cols, 1) / cols
        target = like.new_zeros(B * rows, get_world_size() * B * cols)
        start = get_rank() * B * cols
        target[:, start:start + B * cols] = own
        return target

    def multi_label_loss(self, image_feat, text_feat):
        """image_feat: [B, L1, C]; text_feat: [B, L2, C] (the k prompted nouns) -> soft-target InfoNCE."""
        B, L1, _ = image_feat.shape
        L2 = text_feat.shape[1]
        image_x = F.normalize(image_feat, dim=-1).flatten(0, 1)
        text_x = F.normalize(text_feat, dim=-1).flatten(0, 1)
        scale = self.logit_scale if self.share_temperature else self.multi_label_logit_scale
        scale = torch.clamp(scale.exp(), max=100)
        logits_per_img = image_x @ all_gather_with_grad(text_x).t() * scale
        logits_per_text = text_x @ all_gather_with_grad(image_x).t() * scale
        loss_img = soft_cross_entropy(logits_per_img, self._own_targets(L1, L2, B, logits_per_img))
        loss_text = soft_cross_entropy(logits_per_text, self._own_targets(L2, L1, B, logits_per_text))
        return 0.5 * (loss_img + loss_text)

    def best_group_multi_label_loss(self, group_feat, text_feat):
        """group_feat: [B, G, C] projected final groups; text_feat: [B, k, C] prompted nouns -> soft-target InfoNCE
        where an image-prompt score is the prompt's cosine with the image's best-matching group."""
        B, k = text_feat.shape[:2]
        groups = F.normalize(group_feat, dim=-1)
        words = F.normalize(text_feat, dim=-1).flatten(0, 1)
        scale = self.logit_scale if self.share_temperature else self.multi_label_logit_scale
        scale = torch.clamp(scale.exp(), max=100)
        per_image = torch.einsum('bgc,nc->bgn', groups, all_gather_with_grad(words)).amax(dim=1) * scale
        per_word = torch.einsum('nc,bgc->nbg', words, all_gather_with_grad(groups)).amax(dim=-1) * scale
        loss_img = soft_cross_entropy(per_image, self._own_targets(1, k, B, per_image))
        loss_text = soft_cross_entropy(per_word, self._own_targets(k, 1, B, per_word))
        return 0.5 * (loss_img + loss_text)

    def encode_image(self, image, *, return_feat=False, as_dict=False):
        """image: [B, 3, H, W] -> image_x [B, C]; with return_feat also 'image_feat' [B, G, C] (projected groups)."""
        outs = self.img_encoder(image, return_feat=return_feat, as_dict=True)
        result = {'image_x': self.img_projector(outs['x'])}
        if return_feat:
            result['image_feat'] = self.img_projector(outs['feat'])
        if as_dict:
            return result
        return tuple(result.values()) if return_feat else result['image_x']

    def encode_text(self, text, *, as_dict=False):
        """text: [B, L] -> text_x [B, C]; text: [B, N, L] -> 'text_x' [B, C] (first text) and
        'text_multi_label_x' [B, N-1, C] (as_dict)."""
        if text.dim() not in (2, 3):
            raise ValueError(f'text must be [B, L] or [B, N, L] token ids, got shape {tuple(text.shape)}')
        result = self.encode_text_features(text)
        result['text_x'] = self.text_projector(result['text_x'])
        if text.dim() == 3:
            text_x = result['text_x'].unflatten(0, (-1, text.shape[1]))
            result['text_x'], result['text_multi_label_x'] = text_x[:, 0], text_x[:, 1:]
        return result if as_dict else result['text_x']

    def encode_text_features(self, text) -> Dict[str, torch.Tensor]:
        """text: [B, L] or [B, N, L] -> {'text_x': [B or B*N, width]} before the projector."""
        return {'text_x': self.text_encoder(text.flatten(0, 1) if text.dim() == 3 else text)}

    def forward_train(self, image, text, **inputs):
        """image: [B, 3, H, W]; text: [B, L] or [B, 1 + k, L] -> {'loss', 'multi_label_loss'} (scalars), and
        'loss_superpixel_kl' with superpixel_kl_weight > 0 (inputs['seg_labels']: [B, h, w] id per patch)."""
        with_kl = self.superpixel_kl_weight > 0
        if with_kl and 'seg_labels' not in inputs:
            raise ValueError('superpixel_kl_weight > 0 needs seg_labels in the batch: set '
                             'data.img_aug.superpixels.enabled: true')
        text_outs = self.encode_text(text, as_dict=True)
        tokens, stages = self.img_encoder.forward_features(image, return_attn=with_kl)
        image_x = self.img_projector(self.img_encoder.pool(tokens))
        losses = {'loss': self.loss(image_x, text_outs['text_x'])}
        losses.update(self.extra_losses(stages, text_outs))
        if with_kl:
            hard = stages[0].attn_dict['hard'][:, 0].transpose(1, 2)  # [B, L, G]
            losses['loss_superpixel_kl'] = self.superpixel_kl_weight * superpixel_kl_loss(
                hard, inputs['seg_labels'].reshape(hard.shape[0], -1))
        if self.with_multi_label and self.multi_label_match == 'best_group':
            losses['multi_label_loss'] = self.multi_label_loss_weight * self.best_group_multi_label_loss(
                self.img_projector(tokens), text_outs['text_multi_label_x'])
        elif self.with_multi_label:
            losses['multi_label_loss'] = self.multi_label_loss_weight * self.multi_label_loss(
                image_x.unsqueeze(1), text_outs['text_multi_label_x'])
        return losses

    def extra_losses(self, stages, text_outs) -> Dict[str, torch.Tensor]:
        """Losses of a variant on the encoder's stage outputs (none for GroupViT)."""
        return {}

    def zero_shot_logits(self, img, text_embedding, with_bg, bg_thresh, top_k=5, bg_rule='groupvit', pamr=False,
                         pamr_iters=10, pamr_dilations=(1, 2, 4, 8, 12, 24), pamr_downsample=4, amp_dtype=None):
        """img: [B, 3, H, W] normalised crops; text_embedding: [N, C] -> [B, N (+1), H, W]; see
        models/groupvit/segmentation.py for the options."""
        return segmentation.segment_crops(self, img, text_embedding, with_bg, bg_thresh, top_k, bg_rule, pamr,
                                          pamr_iters, pamr_dilations, pamr_downsample, amp_dtype)

    def zero_shot_group_rows(self, img, text_embedding, with_bg, bg_thresh, top_k=5, bg_rule='groupvit',
                             amp_dtype=None, **unused_options):
        """img: [B, 3, H, W] -> (final group of every pixel [B, H, W], each group's logits [B, G, N (+1)]): what
        zero_shot_logits gives every pixel of a group without PAMR, for segmentation/evaluation/compact.py."""
        return segmentation.group_rows(self, img, text_embedding, with_bg, bg_thresh, top_k, bg_rule, amp_dtype)

    @torch.no_grad()
    def group_view(self, img, text_embedding, bg_thresh=0.95, top_k=5, bg_rule='groupvit') -> Optional[GroupView]:
        return segmentation.group_view(self, img, text_embedding, bg_thresh, top_k, bg_rule)
