"""OVSegmentor (Xu et al., CVPR 2023) as a method: GroupViT's image-text model with a DINO-initialised grouping ViT,
a BERT text encoder, masked entity completion (stage 1) and cross-image mask consistency (stage 2).

Parameter names are those of the released checkpoint (`img_encoder`, `text_encoder.transformer`, `img_projector`,
`text_projector`, `logit_scale`, `multimodal_groupingblock`, `bridge_projector`, `img_encoder_momentum`,
`logit_scale_mask`).
"""
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..base import map_tokens
from ..builder import MODELS
from ..groupvit.model import MultiLabelContrastive
from ..layers import ProjectMLP
from .entity import EntityHead
from .mask_loss import COST_TYPES, mask_consistency_loss

# what only the training heads hold: a model built without them (the evaluation configs) ignores these names in a
# checkpoint (the released stage-2 file holds them)
TRAINING_HEAD_PREFIXES = ('img_encoder_momentum.', 'multimodal_groupingblock.', 'bridge_projector.',
                          'align_proj_img.', 'align_proj_text.')
TRAINING_HEAD_NAMES = ('logit_scale_mask', )
CROSS_ENTITY_PREFIX = 'A photo of '


def is_training_head(name: str) -> bool:
    return name.startswith(TRAINING_HEAD_PREFIXES) or name in TRAINING_HEAD_NAMES


@MODELS.register_module()
class OVSegmentor(MultiLabelContrastive):
    """Arguments mirror `model` in configs/ovsegmentor/*.yml (the published names).

    use_entityloss: masked entity completion (`entity`, weighted by entity_weight); cross_layers entity blocks.
    use_maskloss: cross-image mask consistency (`mask`, weighted by maskloss_weight) against a momentum copy of the
        image encoder (EMA `momentum` after every optimizer step); the `group_ratio` share of the groups least
        similar to "A photo of <entity>" gets no gradient; targets binarised at cross_threshold x their maximum;
        masks paired by `cost_type` ('L2' or 'cosine').
    entity_mask_padding: false (published) lets padded question positions into the entity head's self-attention.
    project_text_tokens: true (published) also runs the text projector over every token of each training text
        (the result is unused; its batch statistics move the projector's running means and variances).
    question_strip_chars: stripped from both ends of each caption word before entity matching; the published "'s"
        strips the characters ' and s, so entities that begin or end with s ('bus', 'sheep', 'sofa') are never
        masked ("'" strips apostrophes only).
    """

    # the entity head's `assign` and `logit_scale_mask` never get gradients, nor does a frozen BERT
    find_unused_parameters = True

    def __init__(self, img_encoder, text_encoder, output_dim=256, contrast_temperature=0.07, proj_num_layers=2,
                 multi_label=0, share_temperature=False, multi_label_loss_weight=1.0, use_entityloss=False,
                 entity_weight=1.0, cross_layers=1, use_maskloss=False, maskloss_weight=0.1, cost_type='L2',
                 cross_threshold=0.6, group_ratio=0.5, momentum=0.99, entity_mask_padding=False,
                 project_text_tokens=True, question_strip_chars="'s"):
        if multi_label:
            raise ValueError(f'OVSegmentor trains without multi-label prompts: model.multi_label must be 0, got '
                             f'{multi_label}')
        if cost_type not in COST_TYPES:
            raise ValueError(f'model.cost_type must be one of {COST_TYPES}, got {cost_type!r}')
        super().__init__(img_encoder, text_encoder, output_dim=output_dim, contrast_temperature=contrast_temperature,
                         proj_num_layers=proj_num_layers, multi_label=0, share_temperature=share_temperature,
                         multi_label_loss_weight=multi_label_loss_weight)
        self.use_entityloss = use_entityloss
        self.entity_weight = entity_weight
        self.use_maskloss = use_maskloss
        self.maskloss_weight = maskloss_weight
        self.cost_type = cost_type
        self.cross_threshold = cross_threshold
        self.group_ratio = group_ratio
        self.momentum = momentum
        self.project_text_tokens = project_text_tokens
        self.question_strip_chars = question_strip_chars
        if use_entityloss:
            img_width, text_width = self.img_encoder.width, self.text_encoder.width
            width = min(img_width, text_width)
            self.align_proj_img = nn.Linear(img_width, width) if img_width > text_width else nn.Identity()
            self.align_proj_text = nn.Linear(text_width, width) if text_width > img_width else nn.Identity()
            self.multimodal_groupingblock = EntityHead(width, num_heads=8, num_layers=cross_layers,
                                                       mask_padding=entity_mask_padding)
            # a plain BatchNorm: unlike the image and text projectors, the published one is not synchronised
            self.bridge_projector = ProjectMLP(width, num_layers=proj_num_layers, out_dim=output_dim)
        if use_maskloss:
            # built and saved as published, never used
            self.logit_scale_mask = nn.Parameter(torch.ones([]) * np.log(1 / contrast_temperature))
            self.img_encoder_momentum = MODELS.build(img_encoder)
            self.img_encoder_momentum.load_state_dict(self.img_encoder.state_dict())
            self.img_encoder_momentum.requires_grad_(False)

    # ---------------------------------------------------------------- encoders

    def tokenize(self, texts):
        """texts: N strings -> {'input_ids', 'attention_mask'}: [N, context_length] (WordPiece, `[CLS] ... [SEP]`)."""
        return self.text_encoder.tokenize(texts)

    def as_token_dict(self, text) -> Dict[str, torch.Tensor]:
        """Token dict {'input_ids', 'attention_mask'}, or ids [..., L] whose mask is `ids != [PAD]`."""
        if isinstance(text, dict):
            missing = {'input_ids', 'attention_mask'} - set(text)
            if missing:
                raise ValueError(f'text tokens need input_ids and attention_mask, missing {sorted(missing)}')
            return text
        if not isinstance(text, torch.Tensor):
            raise TypeError(f'text must be token ids or a token dict, got {type(text).__name__}')
        pad = self.text_encoder.transformer.config.pad_token_id
        return {'input_ids': text, 'attention_mask': (text != pad).long()}

    def encode_text(self, text, *, as_dict=False):
        """text: tokens {'input_ids', 'attention_mask'} [B, L] -> projected [CLS] embedding [B, C]; as_dict gives
        {'text_x': [B, C], 'text_x_before_proj': [B, width], 'text_feat_before_proj': [B, L, width]}."""
        tokens = self.as_token_dict(text)
        if tokens['input_ids'].dim() != 2:
            raise ValueError(f"encode_text takes tokens [B, L], got {tuple(tokens['input_ids'].shape)}")
        out = self.text_encoder(tokens)
        result = {'text_x': self.text_projector(out['x']), 'text_x_before_proj': out['x'],
                  'text_feat_before_proj': out['all_tokens']}
        if self.training and self.project_text_tokens:
            self.text_projector(out['all_tokens'])
        return result if as_dict else result['text_x']

    @torch.no_grad()
    def build_text_embedding(self, text) -> torch.Tensor:
        """text: tokens {'input_ids', 'attention_mask'} [N, T, L] -> [N, C]: each class's T prompt embeddings
        averaged, then L2-normalised. Padding is cut to the longest prompt (the published class prompts are padded
        to the longest, not to 77)."""
        tokens = self.as_token_dict(text)
        device = next(self.parameters()).device
        N, T, _ = tokens['input_ids'].shape
        length = int(tokens['attention_mask'].sum(dim=-1).max())
        flat = map_tokens(lambda t: t[..., :length].flatten(0, 1).to(device), tokens)
        text_x = self.encode_text(flat).unflatten(0, (N, T))
        return F.normalize(text_x.mean(dim=1), dim=-1)

    def encode_image_parts(self, image, encoder: nn.Module) -> Dict[str, torch.Tensor]:
        """image: [B, 3, H, W] -> {'image_x': [B, C] projected, 'image_feat': [B, G, C] projected groups,
        'image_feat_before_proj': [B, G, width], 'attn_dicts'} from `encoder` (online or momentum)."""
        out = encoder(image, return_feat=True, return_attn=True, as_dict=True)
        return {'image_x': self.img_projector(out['x']), 'image_feat_before_proj': out['feat'],
                'image_feat': self.img_projector(out['feat']), 'attn_dicts': out['attn_dicts']}

    # ---------------------------------------------------------------- losses

    def entity_loss(self, image_parts, question, answer) -> torch.Tensor:
        """Masked entity completion: the question (caption with its entities as [MASK]) reads the unprojected group
        tokens; InfoNCE against the projected answer embedding."""
        question = self.as_token_dict(question)
        question_feat = self.encode_text(question, as_dict=True)['text_feat_before_proj']
        answer_x = self.encode_text(answer)
        groups = self.align_proj_img(image_parts['image_feat_before_proj'])
        completed = self.multimodal_groupingblock(groups, self.align_proj_text(question_feat),
                                                  question['attention_mask'])
        return self.loss(self.bridge_projector(completed), answer_x)

    def group_scores(self, query, key) -> torch.Tensor:
        """query: [B, 1, G, C]; key: [B, 1, L, C] -> [B, G, L] unnormalised group-token scores."""
        return (query.squeeze(1) @ key.squeeze(1).transpose(-2, -1)) * self.img_encoder.width ** -0.5

    def mask_loss(self, image, image_parts, cross_image, cross_entity) -> torch.Tensor:
        """Cross-image mask consistency. The online group queries of `image` against the momentum keys of
        `cross_image` should segment it as the momentum encoder's own groups do; the groups least similar to
        "A photo of <entity>" (`group_ratio` of them) get no gradient."""
        with torch.no_grad():
            cross = self.encode_image_parts(cross_image, self.img_encoder_momentum)
        online = image_parts['attn_dicts'][0]
        target_attn = cross['attn_dicts'][0]
        pred = self.group_scores(online['q'], target_attn['k'].detach())
        target = self.group_scores(target_attn['q'], target_attn['k']).detach()
        size = image.shape[-2:]
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)

        def upsample(scores):
            scores = scores.unflatten(-1, grid)
            return F.interpolate(scores, size=size, mode='bilinear', align_corners=True)

        pred, target = upsample(pred), upsample(target)
        with torch.no_grad():
            noun = self.encode_text(cross_entity)
            similarity = (image_parts['image_feat'] @ noun.unsqueeze(-1)).squeeze(-1)
            least = similarity.topk(k=int(similarity.shape[1] * self.group_ratio), largest=False).indices
            frozen = torch.zeros_like(similarity, dtype=torch.bool).scatter_(1, least, True)
        pred = torch.where(frozen[:, :, None, None], pred.detach(), pred)
        return mask_consistency_loss(pred, target, self.cross_threshold, self.cost_type)

    def forward_train(self, image, text, question=None, answer=None, cross_image=None, cross_entity=None, **inputs):
        """image: [B, 3, H, W]; text, question, answer, cross_entity: tokens {'input_ids', 'attention_mask'} [B, L];
        cross_image: [B, 3, H, W] an image sharing an entity with `image`.
        -> {'matching', 'entity' (use_entityloss), 'mask' (use_maskloss), 'loss': the weighted total}; only 'loss'
        is trained (the trainer sums the terms whose name contains 'loss')."""
        needed = {'question': question, 'answer': answer} if self.use_entityloss else {}
        if self.use_maskloss:
            needed.update(cross_image=cross_image, cross_entity=cross_entity)
        missing = [name for name, value in needed.items() if value is None]
        if missing:
            raise ValueError(f"OVSegmentor's training batch lacks {', '.join(missing)} (use_entityloss "
                             f'{self.use_entityloss}, use_maskloss {self.use_maskloss}); build the training data '
                             'with tools/prepare_ovsegmentor_data.py')
        text_x = self.encode_text(text)
        image_parts = self.encode_image_parts(image, self.img_encoder)
        terms = {'matching': self.loss(image_parts['image_x'], text_x)}
        total = terms['matching']
        if self.use_entityloss:
            terms['entity'] = self.entity_loss(image_parts, question, answer)
            total = total + self.entity_weight * terms['entity']
        if self.use_maskloss:
            terms['mask'] = self.mask_loss(image, image_parts, cross_image, cross_entity)
            total = total + self.maskloss_weight * terms['mask']
        terms['loss'] = total
        return terms

    # ---------------------------------------------------------------- training hooks and checkpoints

    def train_sample_transform(self, data_cfg, img_transform):
        """Training samples with BERT tokens, masked questions and answers (use_entityloss) and cross images
        (use_maskloss); entities from data.text_aug.word_vocab (null: the published 100 words). See data.py."""
        from .data import EntityVocabulary, OVSegmentorSample
        if self.text_encoder.pretrained_path is None:
            raise ValueError('training OVSegmentor needs model.text_encoder.pretrained_path (its vocabulary)')
        vocabulary = EntityVocabulary.from_config(data_cfg.text_aug.get('word_vocab'))
        return OVSegmentorSample(img_transform, self.text_encoder.pretrained_path, self.context_length, vocabulary,
                                 questions=self.use_entityloss, cross_images=self.use_maskloss,
                                 strip_chars=self.question_strip_chars)

    @torch.no_grad()
    def end_step(self, step: int) -> None:
        """After every optimizer step: momentum encoder <- momentum x itself + (1 - momentum) x online encoder."""
        if not self.use_maskloss:
            return
        for online, ema in zip(self.img_encoder.parameters(), self.img_encoder_momentum.parameters()):
            ema.copy_(self.momentum * ema + (1 - self.momentum) * online)

    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A published or stage-1 checkpoint in this model's names: training-head tensors this model does not have
        are dropped; a file without a momentum encoder (stage 1) fills it from the online encoder (the published
        stage-2 start); a file without BERT's position_ids keeps the model's."""
        own = self.state_dict()
        out = {k: v for k, v in state_dict.items() if k in own or not is_training_head(k)}
        if self.use_maskloss and not any(k.startswith('img_encoder_momentum.') for k in out):
            out.update({'img_encoder_momentum.' + k[len('img_encoder.'):]: v for k, v in out.items()
                        if k.startswith('img_encoder.')})
        position_ids = 'text_encoder.transformer.embeddings.position_ids'
        if position_ids in own:
            out.setdefault(position_ids, own[position_ids])
        return out
