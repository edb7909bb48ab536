"""SegCLIP's superpixel KL loss: the patch-to-group assignment should agree with its mean over the patches of the
same (unsupervised, low-level) superpixel. Used by SegCLIP and, as an option, by GroupViT / PGSeg."""
import torch
import torch.nn.functional as F


def superpixel_kl_loss(assignment: torch.Tensor, seg_labels: torch.Tensor) -> torch.Tensor:
    """assignment: [B, L, G] (SegCLIP: the hard, straight-through assignment of L patches to G groups);
    seg_labels: [B, L] superpixel id of every patch -> scalar.

    With M [B, L, G] the mean of the assignment over the patches that share a patch's superpixel:
    (KL(softmax(M) || softmax(A)) + KL(softmax(A) || softmax(M))) / 2, each summed over B*L*G and divided by
    B*L*G. The softmax is taken of the (one-hot) assignments themselves, as published."""
    if assignment.dim() != 3 or seg_labels.shape != assignment.shape[:2]:
        raise ValueError(f'superpixel_kl_loss: assignment [B, L, G] and seg_labels [B, L] expected, got '
                         f'{tuple(assignment.shape)} and {tuple(seg_labels.shape)}')
    same = (seg_labels.unsqueeze(-1) == seg_labels.unsqueeze(-2)).to(assignment.dtype)  # [B, L, L]
    mean = torch.einsum('bgl,blc->bgc', same, assignment)
    mean = mean / torch.clamp_min(same.sum(dim=-1, keepdim=True), min=1.0)
    count = float(assignment.numel())
    kl_mean_to_assignment = F.kl_div(F.log_softmax(assignment, dim=-1), F.softmax(mean, dim=-1),
                                     reduction='sum') / count
    kl_assignment_to_mean = F.kl_div(F.log_softmax(mean, dim=-1), F.softmax(assignment, dim=-1),
                                     reduction='sum') / count
    return (kl_mean_to_assignment + kl_assignment_to_mean) / 2.
