"""Cross-image mask consistency: the group masks of an image, computed against the key tokens of another image that
shares an entity with it, should agree with that other image's own group masks (published arithmetic)."""
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

COST_TYPES = ('L2', 'cosine')


@torch.no_grad()
def hungarian_match(pred: torch.Tensor, target: torch.Tensor, cost_type: str = 'L2'):
    """pred, target: [B, K, D] masks -> (pred index [B, K], target index [B, K]) of the one-to-one pairing with the
    least total cost: L2 distance ('L2') or negative cosine similarity ('cosine')."""
    if cost_type == 'L2':
        cost = torch.cdist(pred, target, p=2)
    elif cost_type == 'cosine':
        eps = 1e-6
        cost = -(pred @ target.transpose(-2, -1)) / (pred.norm(dim=-1)[..., None] + eps) \
            / (target.norm(dim=-1)[..., None, :] + eps)
    else:
        raise ValueError(f'cost_type must be one of {COST_TYPES}, got {cost_type!r}')
    rows, cols = zip(*(linear_sum_assignment(c.cpu().numpy()) for c in cost))
    as_index = lambda idx: torch.as_tensor(np.stack(idx), dtype=torch.long, device=pred.device)  # noqa: E731
    return as_index(rows), as_index(cols)


def min_max_normalise(x: torch.Tensor) -> torch.Tensor:
    """x: [..., D] -> each row scaled to [0, 1]."""
    low, high = x.min(dim=-1, keepdim=True).values, x.max(dim=-1, keepdim=True).values
    return (x - low) / (high - low)


def dice_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """pred, target: [B, K, D] -> sum over images of 1 - (2 |p t| + 1) / (|p| + |t| + 1) over all K x D values, / K."""
    pred, num_masks = pred.flatten(1), pred.shape[1]
    target = target.flatten(1)
    dice = (2 * (pred * target).sum(-1) + 1) / (pred.sum(-1) + target.sum(-1) + 1)
    return (1 - dice).sum() / num_masks


def mask_consistency_loss(pred: torch.Tensor, target: torch.Tensor, threshold: float = 0.6,
                          cost_type: str = 'L2') -> torch.Tensor:
    """pred: [B, K, H, W] group-token scores (the prediction, with gradient); target: [B, K, H, W] scores of the other
    view (no gradient) -> scalar.

    Masks are paired by Hungarian matching of their L2-normalised maps; the target becomes sigmoid(target)
    binarised at `threshold` x its maximum, the prediction is min-max normalised, and the loss is their Dice.
    Both are cast to float32 first, as published (a float64 model computes this loss in float32).
    """
    batch = pred.shape[0]
    pred, target = pred.flatten(2).float(), target.flatten(2).float()
    pred_index, target_index = hungarian_match(F.normalize(pred, dim=-1), F.normalize(target, dim=-1), cost_type)
    rows = torch.arange(batch, device=pred.device)[:, None]
    pred, target = pred[rows, pred_index], target[rows, target_index].sigmoid()
    target = (target >= target.max(dim=-1, keepdim=True).values * threshold).to(target.dtype)
    return dice_loss(min_max_normalise(pred), target)
