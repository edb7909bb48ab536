"""SegCLIP (Luo et al., ICML 2023): learnable centers gather CLIP's patch tokens into semantic regions; trained with
the image-text contrastive loss, a superpixel KL loss on the patch-to-center assignment and an MAE reconstruction
loss. The state dict has the official names (`clip.*`, `vis_mae_decoder.*`), so the released `segclip.bin` loads
strictly."""
import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from utils.distributed import all_gather_with_grad, get_rank

from ..base import GroupView, SegmentationMethod
from ..builder import MODELS
from ..clip import CLIP, build_clip
from ..superpixel_kl import superpixel_kl_loss
from . import segmentation
from .mae import MAEDecoder, random_masking
from .semantic import CenterAssignment
from .visual import SegViT, embed_tokens

# trained with train.base_lr (4e-3 published) / kept at base_lr x backbone_lr_scale (4e-6) / frozen, by name prefix
BACKBONE_PREFIXES = ('clip.transformer.', 'clip.ln_final.', 'clip.text_projection', 'clip.logit_scale',
                     'clip.visual.transformer.layers0.')
FROZEN_PREFIXES = ('clip.token_embedding.', 'clip.positional_embedding', 'clip.visual.class_embedding',
                   'clip.visual.positional_embedding', 'clip.visual.conv1.', 'clip.visual.ln_pre.')


class ImageOutputs(NamedTuple):
    image_x: torch.Tensor            # [B, E] ln_post(max over the centers) @ proj
    image_feat: torch.Tensor         # [B, G, E] ln_post(centers) @ proj
    assignment: CenterAssignment     # centers [B, G, C] (before ln_post), hard and soft [B, G, h*w]
    grid: Tuple[int, int]            # (h, w) patch grid


@MODELS.register_module()
class SegCLIP(SegmentationMethod):
    """Arguments mirror `model` in configs/segclip.yml.

    clip_model: the path of OpenAI's `ViT-B-16.pt` (its weights initialise the CLIP parts: visual block N becomes
        `layers0.N` below first_stage_layer, `layers2.(N - first_stage_layer)` from it), an architecture name of
        models.clip.CLIP_ARCHITECTURES or a mapping of CLIP's arguments (random weights), or null (random ViT-B/16).
    first_stage_layer: CLIP image blocks before the semantic layer (10 of 12).
    use_vision_mae_recon, mae_vis_mask_ratio: the MAE loss and the share of the 1 + h*w tokens masked.
    use_seglabel: the superpixel KL loss (forward_train then needs `seg_labels`).
    kl_loss_weight, mae_loss_weight: weights of those two losses (1 and 1 published).
    per_sample_center_attention: false (published) reproduces in forward_train the official code's batch mixing in
        the centers' cross-attention (see semantic.CenterAttentionBlock); true attends within each sample.
        Inference always attends within each sample (the official code infers one crop at a time).
    backbone_lr_scale: learning rate of the CLIP text tower, `layers0` and logit_scale relative to train.base_lr
        (published 4e-6 / 4e-3); see `param_lr_scale`.
    freeze_embeddings: the token and position embeddings, class embedding, conv1 and ln_pre get no gradient.
    """

    def __init__(self, clip_model=None, first_stage_layer: int = 10, use_vision_mae_recon: bool = True,
                 mae_vis_mask_ratio: float = 0.75, use_seglabel: bool = True, kl_loss_weight: float = 1.0,
                 mae_loss_weight: float = 1.0, per_sample_center_attention: bool = False,
                 backbone_lr_scale: float = 1e-3, freeze_embeddings: bool = True):
        super().__init__()
        clip = build_clip('ViT-B/16' if clip_model is None else clip_model)
        visual = clip.visual
        width, heads = visual.conv1.out_channels, visual.conv1.out_channels // 64
        visual.transformer = SegViT(list(visual.transformer.resblocks), width, heads, first_stage_layer)
        self.clip: CLIP = clip
        self.first_stage_layer = first_stage_layer
        self.use_vision_mae_recon = use_vision_mae_recon
        self.use_seglabel = use_seglabel
        self.mae_vis_mask_ratio = mae_vis_mask_ratio
        self.kl_loss_weight = kl_loss_weight
        self.mae_loss_weight = mae_loss_weight
        self.per_sample_center_attention = per_sample_center_attention
        self.backbone_lr_scale = backbone_lr_scale
        if use_vision_mae_recon:
            self.vis_mae_decoder = MAEDecoder(width, visual.input_resolution, visual.patch_size)
        # without the MAE branch, layers_mae2 and reconstruct_layer2 get no gradient
        self.find_unused_parameters = not use_vision_mae_recon
        if freeze_embeddings:
            for name, param in self.named_parameters():
                if name.startswith(FROZEN_PREFIXES):
                    param.requires_grad = False

    @property
    def patch_size(self) -> int:
        return self.clip.visual.patch_size

    def param_lr_scale(self, name: str) -> float:
        """The factor on the learning rate of parameter `name` (the trainer's per-group hook, utils/optim.py)."""
        return self.backbone_lr_scale if name.startswith(BACKBONE_PREFIXES) else 1.0

    def end_step(self, step: int) -> None:
        """logit_scale is clamped to ln(100) after every optimizer step, as published."""
        with torch.no_grad():
            self.clip.logit_scale.clamp_(max=math.log(100))

    def image_forward(self, image: torch.Tensor, gumbel: bool = False, per_sample: bool = True) -> ImageOutputs:
        """image: [B, 3, H, W] normalised with CLIP's mean/std -> ImageOutputs."""
        visual = self.clip.visual
        grid = visual.patch_grid(image)
        tokens = embed_tokens(visual, image)
        assignment = visual.transformer.centers(tokens[:, 1:], gumbel, per_sample)
        centers = assignment.centers
        pooled = centers.max(dim=1, keepdim=True)[0]
        projected = visual.ln_post(torch.cat([pooled, centers], dim=1)) @ visual.proj
        return ImageOutputs(projected[:, 0], projected[:, 1:], assignment, grid)

    def encode_image(self, image, *, return_feat=False, as_dict=False):
        """image: [B, 3, H, W] -> image_x [B, C]; with return_feat also 'image_feat' [B, 8, C] (the centers)."""
        outs = self.image_forward(image)
        result = {'image_x': outs.image_x}
        if return_feat:
            result['image_feat'] = outs.image_feat
        if as_dict:
            return result
        return tuple(result.values()) if return_feat else result['image_x']

    def encode_text(self, text):
        """text: [B, L] token ids (L <= 77; 32 in training) -> [B, C] (unnormalised)."""
        if text.dim() != 2:
            raise ValueError(f'text must be [B, L] token ids, got shape {tuple(text.shape)}')
        return self.clip.encode_text(text)

    def contrastive_loss(self, image_x, text_x):
        """Symmetric InfoNCE over the global batch, scale min(exp(logit_scale), 100). image_x, text_x: [B, C]."""
        labels = torch.arange(image_x.shape[0], device=image_x.device) + image_x.shape[0] * get_rank()
        image_x, text_x = F.normalize(image_x, dim=-1), F.normalize(text_x, dim=-1)
        scale = torch.clamp(self.clip.logit_scale.exp(), max=100)
        text_to_image = scale * (text_x @ all_gather_with_grad(image_x).t())
        image_to_text = scale * (image_x @ all_gather_with_grad(text_x).t())
        return (F.cross_entropy(text_to_image, labels) + F.cross_entropy(image_to_text, labels)) / 2.

    def mae_loss(self, image):
        """image: [B, 3, H, W] -> MSE of the decoded masked patches; draws the masking noise, then Gumbel noise."""
        visual = self.clip.visual
        masking = random_masking(embed_tokens(visual, image), self.mae_vis_mask_ratio)
        patches = visual.transformer.reconstructed_patches(masking.kept[:, 1:], self.training,
                                                           self.per_sample_center_attention)
        hidden = torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)
        return self.vis_mae_decoder.loss(image, hidden, masking)

    def forward_train(self, image, text, seg_labels: Optional[torch.Tensor] = None, **inputs):
        """image: [B, 3, H, W]; text: [B, L]; seg_labels: [B, h, w] superpixel id per patch (use_seglabel)
        -> {'loss' (contrastive), 'loss_kl', 'loss_mae'}: their sum is the published total.

        Random draws in the official order: Gumbel noise of the image pass, the MAE masking noise, the MAE pass's
        Gumbel noise."""
        if self.use_seglabel and seg_labels is None:
            raise ValueError('SegCLIP with use_seglabel needs seg_labels (superpixel ids per patch) in the batch: '
                             'set data.img_aug.superpixels.enabled: true, or model.use_seglabel: false')
        text_x = self.encode_text(text)
        outs = self.image_forward(image, gumbel=self.training, per_sample=self.per_sample_center_attention)
        losses = {'loss': self.contrastive_loss(outs.image_x, text_x)}
        if self.use_seglabel:
            B, _, L = outs.assignment.hard.shape
            if seg_labels.shape[0] != B or seg_labels[0].numel() != L:
                raise ValueError(f'seg_labels of shape {tuple(seg_labels.shape)} do not give one label per patch of '
                                 f'the {B} images ({outs.grid[0]}x{outs.grid[1]} patches)')
            losses['loss_kl'] = self.kl_loss_weight * superpixel_kl_loss(outs.assignment.hard.transpose(1, 2),
                                                                         seg_labels.reshape(B, L))
        if self.use_vision_mae_recon:
            losses['loss_mae'] = self.mae_loss_weight * self.mae_loss(image)
        return losses

    def zero_shot_logits(self, img, text_embedding, with_bg, bg_thresh, top_k=5, bg_rule='groupvit', amp_dtype=None):
        """img: [B, 3, H, W] normalised crops; text_embedding: [N, C] -> [B, N (+1), H, W] (see segmentation.py);
        every crop is segmented on its own."""
        check_bg_rule(bg_rule)
        return segmentation.segment_crops(self, img, text_embedding, with_bg, bg_thresh, top_k, amp_dtype)

    @torch.no_grad()
    def group_view(self, img, text_embedding, bg_thresh=0.8, top_k=5, bg_rule='groupvit') -> Optional[GroupView]:
        check_bg_rule(bg_rule)
        return segmentation.group_view(self, img, text_embedding, bg_thresh, top_k)


def check_bg_rule(bg_rule: str) -> None:
    if bg_rule != 'groupvit':
        raise ValueError(f"SegCLIP decides background with its published rule (test_cfg.bg_rule 'groupvit': the best "
                         f"score below min(bg_thresh, the largest center-class score)), got bg_rule {bg_rule!r}")

