"""PGSeg image encoder (Zhang et al., NeurIPS 2023): GroupViT plus prototype supervision of its group tokens."""
import numpy as np
import torch
import torch.nn as nn

from typing import NamedTuple, Optional

from ..builder import MODELS
from ..groupvit.encoder import GroupingLayer, GroupViT
from ..layers import ProjectMLP
from .prototypes import ImagePrototypes, gather_matched, hungarian_match, prototype_contrastive_loss


class PrototypeStageOutput(NamedTuple):
    """A grouping stage's output (as GroupViT's StageOutput) plus the prototypes of its input tokens."""
    x: torch.Tensor                            # [B, L_out, C_out] tokens after the grouping block
    group_token: Optional[torch.Tensor]        # [B, S, C] this stage's group tokens after its blocks
    attn_dict: Optional[dict]                  # {'hard', 'soft'}: [B, 1, S_out, L] assignment, when asked
    centers: Optional[torch.Tensor]            # [B, S_out, C] group centres before assignment
    prototypes: torch.Tensor                   # [B, S_out, C_out] prototypes of the stage input


class PrototypeGroupingLayer(GroupingLayer):
    """A grouping stage whose tokens get their prototypes' reconstruction added before the grouping block.

    The prototype module is registered as `downsample_spatial`, the published name.
    """

    def __init__(self, prototypes: ImagePrototypes, **kwargs):
        super().__init__(**kwargs)
        self.downsample_spatial = prototypes

    def forward(self, x, prev_group_token=None, return_attn=False) -> PrototypeStageOutput:
        """x: [B, L, C]; prev_group_token: [B, S_prev, C_prev] from the previous stage."""
        out, group_token = self.run_blocks(x, prev_group_token)
        prototypes, recon = self.downsample_spatial(x)
        out, attn_dict, centers = self.downsample(out + recon, group_token, return_attn=return_attn)
        return PrototypeStageOutput(out, group_token, attn_dict, centers, prototypes)


@MODELS.register_module()
class PGSeg(GroupViT):
    """GroupViT whose grouping stages also get EM prototypes of their input tokens (added back through an MLP),
    and whose group centres are pulled towards matched image and text prototypes by `prototype_loss`.

    Published behaviour is the default; the switches below fix its quirks for new experiments:
      match_most_similar: pair groups with their most similar prototypes (published: least similar).
      hrs_diagonal: score each group by its own matched pair in HRS (published: by prototype 0).
      update_image_prototypes: momentum-update the image prototype buffers (published: never updated).
      empty_selection_as_zero: an empty HRS selection adds 0 instead of NaN.
      text_prototype_update_in_eval: the text prototype buffer also moves in eval mode, in zero-shot class
        embedding too (published: true).
    """

    def __init__(self, *args, return_attn_o=True, prototype_iters=10, prototype_momentum=0.9,
                 update_image_prototypes=False, prototype_temperature=0.1, hrs_threshold=0.1,
                 prototype_loss_weight=0.1, text_prototype_loss_weight=0.1, match_most_similar=False,
                 hrs_diagonal=False, empty_selection_as_zero=False, text_prototype_update_in_eval=True, **kwargs):
        # return_attn_o is a published config key; this encoder always returns what the loss needs.
        self.prototype_iters = prototype_iters
        self.prototype_momentum = prototype_momentum
        self.update_image_prototypes = update_image_prototypes
        super().__init__(*args, **kwargs)
        self.hrs_threshold = hrs_threshold
        self.prototype_loss_weight = prototype_loss_weight
        self.text_prototype_loss_weight = text_prototype_loss_weight
        self.match_most_similar = match_most_similar
        self.hrs_diagonal = hrs_diagonal
        self.empty_selection_as_zero = empty_selection_as_zero
        self.text_prototype_update_in_eval = text_prototype_update_in_eval
        # Unused in the published forward pass, kept so that published checkpoints load strictly.
        self.mapping_text = ProjectMLP(in_dim=self.embed_dim, out_dim=256)
        self.logit_scale = nn.Parameter(torch.ones([]) * np.log(1 / prototype_temperature))

    @property
    def num_text_prototypes(self):
        return self.num_output_groups[-1]

    def build_layer(self, **kwargs) -> GroupingLayer:
        """Grouping stages get image prototypes of their input tokens; the last stage is GroupViT's."""
        downsample = kwargs['downsample']
        if downsample is None:
            return GroupingLayer(**kwargs)
        prototypes = ImagePrototypes(dim=kwargs['dim'], out_dim=downsample.out_dim,
                                     num_output_group=downsample.num_output_group, stage=self.prototype_iters,
                                     mom=self.prototype_momentum, momentum_update=self.update_image_prototypes)
        return PrototypeGroupingLayer(prototypes, **kwargs)

    def _matched_loss(self, groups, prototypes):
        """groups, prototypes: [B, G, C] -> contrastive loss of each group with its matched prototype."""
        index = hungarian_match(groups, prototypes, most_similar=self.match_most_similar)
        return prototype_contrastive_loss(groups, gather_matched(prototypes, index), self.logit_scale,
                                          self.hrs_threshold, self.hrs_diagonal, self.empty_selection_as_zero)

    def prototype_loss(self, stages, text_prototypes):
        """stages: the encoder's StageOutputs; text_prototypes: [B, K, 1] -> scalar `loss_pg`.

        loss_pg = w * (L(stage-1 centres, image prototypes) + L(stage-2 centres, image prototypes)
                       + w_text * L(channel-mean of stage-2 centres, text prototypes))
        """
        grouped = [s for s in stages if s.centers is not None]
        losses = [self._matched_loss(s.centers, s.prototypes) for s in grouped]
        text_groups = grouped[-1].centers.mean(dim=-1, keepdim=True)
        text_loss = self._matched_loss(text_groups, text_prototypes)
        return self.prototype_loss_weight * (sum(losses) + self.text_prototype_loss_weight * text_loss)
