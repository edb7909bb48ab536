"""PGSeg as a method: GroupViT's model with text prototypes and the prototype loss `loss_pg`."""
from typing import Dict

import torch.nn as nn

from ..groupvit.model import MultiLabelContrastive
from .prototypes import TextPrototypes


@MultiLabelContrastive.variant_for('PGSeg')
class PGSegContrastive(MultiLabelContrastive):
    """`model.type: MultiLabelContrastive` with `img_encoder.type: PGSeg` builds this class.

    Text embeddings also yield PGSeg's text prototypes (T-NPR); `forward_train` adds `loss_pg`.
    """

    # the prototype loss leaves some parameters without gradient in some steps
    find_unused_parameters = True

    def build_text_encoder(self, cfg) -> nn.Module:
        encoder = super().build_text_encoder(cfg)
        # registered inside the text encoder: the published checkpoints name it text_encoder.Atten
        encoder.Atten = TextPrototypes(num_output_group=self.img_encoder.num_text_prototypes,
                                       update_in_eval=self.img_encoder.text_prototype_update_in_eval)
        return encoder

    def encode_text_features(self, text) -> Dict:
        """text: [B, L] or [B, N, L] -> {'text_x': [B or B*N, width], 'text_prototypes': [B, K, 1] of the first
        text, or None in eval mode with text_prototype_update_in_eval off}."""
        x = self.text_encoder(text.flatten(0, 1) if text.dim() == 3 else text)
        prototypes = None
        if self.training or self.text_encoder.Atten.update_in_eval:
            prototypes = self.text_encoder.Atten(x)
            if text.dim() == 3:
                prototypes = prototypes.unflatten(0, (-1, text.shape[1]))[:, 0]
        return {'text_x': x, 'text_prototypes': prototypes}

    def extra_losses(self, stages, text_outs) -> Dict:
        return {'loss_pg': self.img_encoder.prototype_loss(stages, text_outs['text_prototypes'])}
