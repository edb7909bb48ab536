"""TCL (Cha, Mun, Roh, CVPR 2023): text-grounded masks learned on a frozen CLIP from image-caption pairs.

The frozen CLIP image encoder gives the tokens before block `ie_freeze`; the masker (its own trainable copy of the
later blocks, MaskCLIP-style last block, a 4x upsampling gated decoder, LayerNorm + projection) turns them into a
dense embedding whose cosine similarity with a text embedding gives the mask sigmoid(w cos + b). Training grounds
each caption's mask in its image with contrastive losses on the masked image (tcli: CLIP's embedding of the masked
pixels) and on the mask-pooled dense embedding (tclf), plus area and total-variation priors.
"""
import copy
import logging
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from utils.distributed import get_world_size

from ..base import SegmentationMethod
from ..builder import MODELS
from ..clip import CLIP_ARCHITECTURES, build_clip
from ..pamr import PAMR
from .encoders import CLIPImageEncoder, CLIPTextEncoder, Masker, MaskerBackbone
from .modules import ExtendedInfoNCE, InfoNCE, area_loss, normalize, tv_loss

logger = logging.getLogger(__name__)

# the published trainer's checkpoints hold these constant PAMR kernels (its lazily built PAMR module)
PAMR_KERNELS = ('pamr.aff_x.kernel', 'pamr.aff_m.kernel', 'pamr.aff_std.kernel')
TEMPERATURES = ('tcli_loss.logit_scale', 'tclf_loss.logit_scale')
CLIP_PREFIXES = ('clip_image_encoder.', 'clip_text_encoder.')
AREA_PRIOR = 0.4  # the published prior of the positive mask's mean area (AreaTCLLoss(0.4))


def compute_padsize(H: int, W: int, patch_size: int) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes H x W a multiple of patch_size, centred (the odd pixel
    goes right / bottom)."""
    def split(n):
        total = (patch_size - n % patch_size) % patch_size
        return total // 2, total - total // 2
    return (*split(W), *split(H))


@MODELS.register_module()
class TCL(SegmentationMethod):
    """Arguments are the published `model` keys (configs/tcl.yml):

    clip_model: a CLIP architecture name ('ViT-B/16': random weights, nothing downloaded), a mapping of CLIP
        constructor arguments, or the path of a CLIP file (OpenAI's ViT-B-16.pt or a checkpoint of this project's
        ContrastiveCLIP); its encoders are frozen.
    ie_freeze: the masker takes CLIP's tokens after this many blocks and has its own copy of the rest (1..depth-1).
    ie_ignore_last_attn: MaskCLIP-style last block (each token attends to itself) in CLIP's dense features and in
        the masker.
    masker: {type: Masker, decoder: {type: GDecoder, double, n_layers, kernel_size, act, norm}, sim2mask: {init_w,
        init_b, gumbel_tau, learnable}}.
    tcl_w, area_w, tv_w: weights of the tcli + tclf, area and total-variation losses (0 leaves a loss out).
    ust_steps: the published `train.ust_steps`: before this optimizer step only the decoder, image_proj, sim2mask
        and the temperatures train (the masker's block copy is frozen).
    """
    find_unused_parameters = True  # the masker's block copy has no gradient during the UST phase

    def __init__(self, clip_model='ViT-B/16', ie_freeze: int = 11, ie_ignore_last_attn: bool = True,
                 masker: Optional[dict] = None, tcl_w: float = 0.1, area_w: float = 0.4, tv_w: float = 1.0,
                 ust_steps: int = 0):
        super().__init__()
        masker = dict(masker or {})
        if masker.pop('type', 'Masker') != 'Masker':
            raise ValueError("model.masker.type must be 'Masker'")
        clip = build_clip(clip_model)
        self.clip_weights_from_file = isinstance(clip_model, str) and clip_model not in CLIP_ARCHITECTURES
        depth = len(clip.visual.transformer.resblocks)
        if not 1 <= ie_freeze < depth:
            raise ValueError(f'model.ie_freeze must be in 1..{depth - 1} for a CLIP of {depth} blocks, got {ie_freeze}')
        self.ie_freeze = ie_freeze
        self.ust_steps = int(ust_steps)
        self.clip_text_encoder = CLIPTextEncoder(clip)
        self.clip_image_encoder = CLIPImageEncoder(clip.visual)
        self.clip_image_encoder.requires_grad_(False)
        self.clip_text_encoder.requires_grad_(False)
        width = self.clip_image_encoder.clip_visual.conv1.out_channels
        image_proj = copy.deepcopy(self.clip_image_encoder.clip_proj)
        self.masker = Masker(MaskerBackbone(self.clip_image_encoder, ie_freeze), image_proj, width,
                             self.clip_image_encoder.patch_size, ignore_last_attn=ie_ignore_last_attn, **masker)
        self.masker.requires_grad_(True)  # its copies of CLIP's modules were made from the frozen encoder
        self.tcl_w, self.area_w, self.tv_w = tcl_w, area_w, tv_w
        if tcl_w:
            self.tcli_loss = InfoNCE()
            self.tclf_loss = ExtendedInfoNCE()

    # ----- the contract ---------------------------------------------------------------------------------------
    @property
    def patch_size(self) -> int:
        return self.clip_image_encoder.patch_size

    @property
    def context_length(self) -> int:
        return self.clip_text_encoder.context_length

    def begin_step(self, step: int) -> None:
        """The UST phase: the masker's copy of CLIP's blocks trains only from step `ust_steps` on."""
        self.masker.image_encoder.backbone.requires_grad_(step >= self.ust_steps)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """image: [B, 3, H, W] -> CLIP's image embedding [B, C] (unnormalised; frozen, so TCL's is CLIP's)."""
        return self.clip_image_encoder(image)

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        """text: [B, L] token ids -> CLIP's text embedding [B, C] (unnormalised)."""
        return self.clip_text_encoder(text)

    @torch.no_grad()
    def build_text_embedding(self, text: torch.Tensor) -> torch.Tensor:
        """text: [N, T, L] -> [N, C]: the T prompt embeddings averaged unnormalised, then L2-normalised (eps 1e-6),
        1024 prompts at a time."""
        text = text.to(next(self.parameters()).device)
        N, T = text.shape[:2]
        flat = text.flatten(0, 1)
        embeddings = torch.cat([self.clip_text_encoder(flat[i:i + 1024]) for i in range(0, flat.shape[0], 1024)])
        return normalize(embeddings.unflatten(0, (N, T)).mean(dim=1), -1)

    def forward_train(self, image: torch.Tensor, text: torch.Tensor, **inputs) -> Dict[str, torch.Tensor]:
        """image: [B, 3, H, W]; text: [B, L] caption tokens -> {'area_loss', 'neg_area_loss', 'tclf_loss',
        'tv_img_loss', 'tv_mask_loss', 'tcli_loss'} (scalars, each already weighted; a zero weight leaves its terms
        out). The forward draws exactly one torch.rand_like (the Gumbel noise of the [B, B*world, h', w'] logits)."""
        if text.dim() != 2:
            raise ValueError(f'TCL trains on one caption per image: text must be [B, L] token ids, got shape '
                             f'{tuple(text.shape)}')
        if image.shape[0] * get_world_size() < 2:
            raise ValueError('TCL needs at least 2 image-caption pairs per step over all processes (the other '
                             f'captions are the negatives), got {image.shape[0] * get_world_size()}')
        grid = self.clip_image_encoder.clip_visual.patch_grid(image)
        with torch.no_grad():
            image_feat = self.clip_image_encoder.tokens_after(image, self.ie_freeze)
            text_emb = self.clip_text_encoder(text)
        masks, dense = self.masker(image_feat, grid, text_emb)
        losses = {}
        if self.area_w:
            losses['area_loss'] = area_loss(masks['soft_pos'], AREA_PRIOR) * self.area_w
            losses['neg_area_loss'] = area_loss(masks['soft_neg'], 0.0) * self.area_w
        if self.tcl_w:
            pooled = masked_pool(dense, masks['soft_all'])
            losses['tclf_loss'] = self.tclf_loss(pooled, text_emb) * self.tcl_w
        if self.tv_w:
            losses['tv_img_loss'] = tv_loss(dense) * self.tv_w
            losses['tv_mask_loss'] = tv_loss(masks['soft_all']) * self.tv_w
        if self.tcl_w:
            pos_mask = F.interpolate(masks['pos'], size=image.shape[2:])  # nearest, as published
            losses['tcli_loss'] = self.tcli_loss(self.clip_image_encoder(pos_mask * image), text_emb) * self.tcl_w
        return losses

    # ----- masks ----------------------------------------------------------------------------------------------
    def keep_prompt_mask(self, clip_dense: torch.Tensor, text_emb: torch.Tensor, size: Tuple[int, int]
                         ) -> torch.Tensor:
        """The keep-prompt branch: CLIP's own (MaskCLIP) dense embedding [B, C', h, w] and text_emb [N, C] ->
        sigmoid((cos - 0.25) * 10) [B, N, *size] (bilinear)."""
        image_emb = normalize(self.clip_image_encoder.clip_proj(clip_dense), 1)
        simmap = torch.einsum('b c h w, n c -> b n h w', image_emb, normalize(text_emb, -1))
        return F.interpolate(torch.sigmoid((simmap - 0.25) * 10.0), size, mode='bilinear')

    @torch.no_grad()
    def generate_masks(self, image: torch.Tensor, text_emb: torch.Tensor, apply_pamr: bool = False,
                       kp_w: float = 0.3, pamr_iters: int = 10,
                       pamr_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)) -> Tuple[torch.Tensor, torch.Tensor]:
        """image: [B, 3, H, W] normalised; text_emb: [N, C] -> (masks [B, N, H, W], simmap [B, N, h', w']).

        As published: the image is zero-padded (centred) to a multiple of the patch size; the soft masks
        sigmoid(w cos + b) at 4x the patch grid are refined by PAMR (`apply_pamr`; the padded image resized to
        them), then mixed with the keep-prompt mask, kp_w * sigmoid((cos_CLIP - 0.25) * 10) + (1 - kp_w) * mask
        (kp_w 0: no mix), resized bilinearly to the padded size and cropped to H x W. simmap is the masker's cosine
        similarity of the padded image, before PAMR and the mix."""
        H, W = image.shape[2:]
        pad = compute_padsize(H, W, self.patch_size)
        if any(pad):
            image = F.pad(image, pad)
        pH, pW = image.shape[2:]
        grid = self.clip_image_encoder.clip_visual.patch_grid(image)
        clip_dense, image_feat = self.clip_image_encoder.dense(image, self.ie_freeze, self.masker.ignore_last_attn)
        mask, simmap = self.masker.forward_seg(image_feat, grid, text_emb)
        if apply_pamr:
            small = F.interpolate(image, mask.shape[-2:], mode='bilinear', align_corners=True)
            mask = PAMR(pamr_iters, pamr_dilations)(small, mask)
        if kp_w:
            if not self.masker.ignore_last_attn:
                raise ValueError('the keep-prompt branch (kp_w > 0) needs model.ie_ignore_last_attn: true')
            mask = kp_w * self.keep_prompt_mask(clip_dense, text_emb, mask.shape[2:]) + (1.0 - kp_w) * mask
        mask = F.interpolate(mask, (pH, pW), mode='bilinear')
        left, _, top, _ = pad
        return mask[:, :, top:top + H, left:left + W], simmap

    def zero_shot_logits(self, img: torch.Tensor, text_embedding: torch.Tensor, with_bg: bool, bg_thresh: float,
                         pamr: bool = False, kp_w: float = 0.3, pamr_iters: int = 10,
                         pamr_dilations: Sequence[int] = (1, 2, 4, 8, 12, 24)) -> torch.Tensor:
        """img: [B, 3, H, W] normalised crops; text_embedding: [N, C] -> [B, N (+1), H, W]: the masks of
        generate_masks, after a constant bg_thresh channel when with_bg (no softmax, no top-k)."""
        masks, _ = self.generate_masks(img, text_embedding, apply_pamr=pamr, kp_w=kp_w, pamr_iters=pamr_iters,
                                       pamr_dilations=pamr_dilations)
        if not with_bg:
            return masks
        return torch.cat([torch.full_like(masks[:, :1], bg_thresh), masks], dim=1)

    # ----- checkpoints ----------------------------------------------------------------------------------------
    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A checkpoint's weights -> the state dict to load strictly. Exactly these published omissions are filled:
        the release (`tcl.pth`: the masker only) gets the CLIP encoders from this model (they came from
        `clip_model`) and log(1/0.07) for an absent temperature; the published trainer's constant PAMR kernels are
        dropped. Anything else missing or extra stays an error of the strict load."""
        weights = {k: v for k, v in state_dict.items() if k not in PAMR_KERNELS}
        own = self.state_dict()
        if any(k.startswith(CLIP_PREFIXES) for k in weights):
            return weights
        if not self.clip_weights_from_file:
            logger.warning('the checkpoint holds no CLIP weights (the released masker); the CLIP encoders keep the '
                           'RANDOM weights of this model: set model.clip_model to the path of ViT-B-16.pt')
        weights.update({k: v for k, v in own.items() if k.startswith(CLIP_PREFIXES)})
        for name in TEMPERATURES:
            if name in own and name not in weights:
                weights[name] = torch.full_like(own[name], math.log(1 / 0.07))
        return weights


def masked_pool(dense: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """dense: [B, C, H, W]; mask: [B, N, H, W] -> [B, N, C]: the mask-weighted mean of the dense embedding."""
    weight = mask / (mask.sum((2, 3), keepdim=True) + eps)
    return torch.einsum('bchw,bnhw->bnc', dense, weight)

