"""The method contract: what every segmentation method implements, and all that the trainer, the evaluators, the
demos and the exporters may rely on.

A method is one registered `nn.Module` subclass of `SegmentationMethod` (one folder under `models/`). Nothing outside
its folder reads its submodules: the trainer calls `forward_train` and the step hooks, zero-shot classification
calls `tokenize` / `build_text_embedding` / `encode_image`, and zero-shot segmentation calls `zero_shot_logits` (and,
for the demo's group pictures, `group_view`).

Trainer:
  forward_train(image, text, **inputs) -> {name: scalar}: every key that contains 'loss' is summed and trained;
      any other key is logged only. `inputs` are the other tensors of the training batch (e.g. superpixel labels).
  find_unused_parameters: DDP's policy (True when some parameters get no gradient in some steps).
  train_sample_transform(data_cfg, img_transform): how a shard sample becomes the batch's named tensors (None: the
      image and the caption tokens of data.img_aug / data.text_aug).
  begin_step(step): called before the micro-batches of optimizer step `step` (training phases, e.g. what is frozen).
  end_step(step): called after that optimizer step (momentum encoders, clamps).
  Parameters with requires_grad False when the trainer starts are frozen and never reach the optimizer.

Checkpoints:
  adapt_checkpoint(state_dict) -> state_dict: a method's own rules for published names (load_weights applies it).

Encoders:
  tokenize(texts) -> token ids [N, L] for this method's text encoder, or a dict of such tensors (BERT's input_ids and
      attention_mask); generic code handles both through `map_tokens`.
  encode_image(image [B, 3, H, W]) -> [B, C]; encode_text(tokens [B, L]) -> [B, C] (both unnormalised).
  build_text_embedding(tokens [N, T, L]) -> [N, C]: one L2-normalised embedding per class from T prompts.

Zero-shot segmentation (per crop; the mmseg segmentor does the windows and the resize to the original image):
  zero_shot_logits(img [B, 3, h, w], text_embedding [N, C], with_bg, bg_thresh, **options)
      -> [B, N (+1, background first, when with_bg), h, w]. `options` are the method's own protocol settings
      (named arguments of its `zero_shot_logits`); the segmentor passes the protocol's test_cfg entries it names.
  group_view(img [1, 3, h, w], text_embedding [N, C], bg_thresh, **options) -> GroupView, or None for a method
      without groups; `options` as for zero_shot_logits.
"""
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn


@dataclass
class GroupView:
    """What a grouping method shows of its groups for one image.

    maps: per grouping stage (first .. final) the soft assignment [h, w, G_s] of every pixel to that stage's groups;
    affinity: [G, N] group-class scores of the final groups;
    background_threshold: a final group whose best score is below it is background (with_bg vocabularies).
    """
    maps: List[torch.Tensor]
    affinity: torch.Tensor
    background_threshold: float


Tokens = Union[torch.Tensor, Dict[str, torch.Tensor]]


def map_tokens(fn: Callable[[torch.Tensor], torch.Tensor], tokens: Tokens) -> Tokens:
    """`fn` applied to token ids [..., L], or to every tensor of named tokens (e.g. BERT's {'input_ids',
    'attention_mask'}): how generic code reshapes, slices and moves the tokens of any method."""
    return {name: fn(value) for name, value in tokens.items()} if isinstance(tokens, dict) else fn(tokens)


def training_loss(terms: Dict[str, torch.Tensor]) -> torch.Tensor:
    """The sum of the terms whose name contains 'loss' (what the trainer back-propagates)."""
    losses = [v for k, v in terms.items() if 'loss' in k]
    if not losses:
        raise ValueError(f"forward_train returned no term whose name contains 'loss': {sorted(terms)}")
    return sum(losses)


class SegmentationMethod(nn.Module):
    """Base class of every method; see the module docstring for the contract."""

    find_unused_parameters: bool = False
    patch_size: int = 16  # input sizes the image encoder takes are multiples of it

    @property
    def context_length(self) -> int:
        return 77

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """texts: N strings -> [N, context_length] CLIP BPE ids (start, text, end, zero padding)."""
        from datasets.tokenizer import tokenize
        return tokenize(list(texts), context_length=self.context_length)

    def forward(self, *args, **kwargs):
        """Training: `forward_train` (what DDP wraps)."""
        return self.forward_train(*args, **kwargs)

    def forward_train(self, image: torch.Tensor, text: torch.Tensor, **inputs) -> Dict[str, torch.Tensor]:
        raise NotImplementedError(f'{type(self).__name__} cannot be trained')

    def train_sample_transform(self, data_cfg, img_transform: Callable) -> Optional[Callable]:
        """None (default): a training sample is data.img_aug's image tensor and data.text_aug's caption tokens
        ('image', 'text'). A method that trains on more returns a callable (raw shard sample {extension: bytes,
        '__url__', '__key__'}, decoded RGB image, caption) -> {name: tensor or dict of tensors} whose names reach
        forward_train; it may raise datasets.shards.BadSample to skip (and count) a sample."""
        return None

    def adapt_checkpoint(self, state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A published or older checkpoint's weights in this method's names (utils.checkpoint.load_weights calls it
        before matching names); unchanged by default."""
        return state_dict

    def begin_step(self, step: int) -> None:
        """Before the micro-batches of optimizer step `step`; nothing by default."""

    def end_step(self, step: int) -> None:
        """After optimizer step `step`; nothing by default."""

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def encode_text(self, text: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def build_text_embedding(self, text: torch.Tensor) -> torch.Tensor:
        """text: [N, T, L] -> [N, C]: each class's T prompt embeddings averaged, then L2-normalised."""
        text = text.to(next(self.parameters()).device)
        N, T = text.shape[:2]
        text_x = self.encode_text(text.flatten(0, 1)).unflatten(0, (N, T))
        return nn.functional.normalize(text_x.mean(dim=1), dim=-1)

    def zero_shot_logits(self, img: torch.Tensor, text_embedding: torch.Tensor, with_bg: bool, bg_thresh: float,
                         **options) -> torch.Tensor:
        raise NotImplementedError

    def group_view(self, img: torch.Tensor, text_embedding: torch.Tensor, bg_thresh: float,
                   **options) -> Optional[GroupView]:
        return None
