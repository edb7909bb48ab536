"""Image-text contrastive model: encoders, projectors, the InfoNCE and multi-label losses, the encode_* API."""
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank, get_world_size

from .builder import MODELS
from .layers import ProjectMLP


def soft_cross_entropy(logits, target):
    """Mean over rows of -sum(target * log_softmax(logits)). logits, target: [N, M]"""
    return torch.sum(-target * F.log_softmax(logits, dim=-1), dim=-1).mean()


@MODELS.register_module()
class MultiLabelContrastive(nn.Module):
    """Arguments mirror `model` in the configs. With `multi_label` = k > 0 the text input is [B, 1 + k, L]:
    the caption, then k prompted nouns, and a multi-label loss pulls each image towards its k prompts."""

    def __init__(self, img_encoder, text_encoder, output_dim=256, contrast_temperature=0.07, proj_num_layers=2,
                 multi_label=0, share_temperature=False, multi_label_loss_weight=1.0):
        super().__init__()
        self.img_encoder = MODELS.build(img_encoder)
        text_encoder = dict(text_encoder)
        text_encoder.setdefault('num_prototypes', getattr(self.img_encoder, 'num_text_prototypes', 0))
        self.text_encoder = MODELS.build(text_encoder)
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

    @property
    def with_multi_label(self):
        return self.multi_label > 0

    @property
    def with_prototypes(self):
        return hasattr(self.img_encoder, 'prototype_loss')

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
        """text: [B, L] -> text_x [B, C]; text: [B, N, L] -> 'text_x' [B, C] (first text), 'text_multi_label_x'
        [B, N-1, C]; as_dict also carries 'text_prototypes' [B, K, 1] for PGSeg."""
        if text.dim() not in (2, 3):
            raise ValueError(f'text must be [B, L] or [B, N, L] token ids, got shape {tuple(text.shape)}')
        num_text = text.shape[1] if text.dim() == 3 else 0
        out = self.text_encoder(text.flatten(0, 1) if num_text else text)
        text_x = self.text_projector(out.x)
        result = {'text_x': text_x, 'text_prototypes': out.prototypes}
        if num_text:
            text_x = text_x.unflatten(0, (-1, num_text))
            result['text_x'] = text_x[:, 0]
            result['text_multi_label_x'] = text_x[:, 1:]
            if out.prototypes is not None:
                result['text_prototypes'] = out.prototypes.unflatten(0, (-1, num_text))[:, 0]
        return result if as_dict else result['text_x']

    def forward_train(self, image, text):
        """image: [B, 3, H, W]; text: [B, L] or [B, 1 + k, L] -> dict of scalar losses (their sum is trained)."""
        text_outs = self.encode_text(text, as_dict=True)
        tokens, stages = self.img_encoder.forward_features(image)
        image_x = self.img_projector(self.img_encoder.pool(tokens))
        losses = {'loss': self.loss(image_x, text_outs['text_x'])}
        if self.with_prototypes:
            losses['loss_pg'] = self.img_encoder.prototype_loss(stages, text_outs['text_prototypes'])
        if self.with_multi_label:
            losses['multi_label_loss'] = self.multi_label_loss_weight * self.multi_label_loss(
                image_x.unsqueeze(1), text_outs['text_multi_label_x'])
        return losses

    def forward(self, image, text):
        return self.forward_train(image, text) if self.training else self.zero_shot_pred(image, text)

    @torch.no_grad()
    def build_text_embedding(self, text):
        """text: [N, T, L] (N classes x T templates) -> [N, C] template-averaged, L2-normalised."""
        text = text.to(next(self.parameters()).device)
        N, T = text.shape[:2]
        text_x = self.encode_text(text.flatten(0, 1)).unflatten(0, (N, T))
        return F.normalize(text_x.mean(dim=1), dim=-1)

    @torch.no_grad()
    def zero_shot_pred(self, image, text):
        """image: [B, 3, H, W]; text: [N, C] class embeddings -> cosine logits [B, N]."""
        return F.normalize(self.encode_image(image), dim=-1) @ text.t()
