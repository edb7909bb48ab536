"""Labels at the original image size: arg-max of bilinearly resized logits without resizing every class.

mmseg resizes all class maps to the original image and takes the arg-max. For many classes and large images that
is most of the evaluation time (151 classes at 2000x3000: 906M resized values) and memory (3.6 GB). The labels
are the same when only the classes that can win somewhere are resized: a bilinear output pixel is a weighted mean
of one 2x2 neighbourhood (cell) of the input, so a class that is below another class at all four corners of a
cell (or below a weighted mean of other classes) is below it everywhere inside the cell.
"""
import math

import torch
import torch.nn.functional as F

# bytes of float32 logits resized to the original image at once; larger images are resized a few classes at a time
RESIZE_CHUNK_BYTES = 256 * 2**20
# margin for float rounding of the interpolation, in machine epsilons of the logits' dtype times the largest |logit|
ROUNDING_MARGIN_EPS = 80


def _cell_corners(t):
    """t: [..., h, w] -> the four corners of every cell, [4, ..., h, w] (cell (i, j) spans rows i, i+1 and columns
    j, j+1; the last row and column repeat at the far border, where bilinear sampling clamps)."""
    t = torch.cat([t, t[..., -1:, :]], dim=-2)
    t = torch.cat([t, t[..., -1:]], dim=-1)
    return torch.stack([t[..., :-1, :-1], t[..., :-1, 1:], t[..., 1:, :-1], t[..., 1:, 1:]])


def _survivors_in_mixed_cells(logits, rows, cols, winners, margin):
    """Cells (rows [M], cols [M]) whose corners have different winners (winners: [4, M]) -> [C] bool: classes
    not below, at all four corners, one of the corner winners or their mean, in at least one of the cells."""
    h, w = logits.shape[1:]
    below, right = (rows + 1).clamp(max=h - 1), (cols + 1).clamp(max=w - 1)
    values = logits[:, torch.stack([rows, rows, below, below]), torch.stack([cols, right, cols, right])]  # [C, 4, M]
    cells = torch.arange(len(rows), device=logits.device)
    references = torch.stack([values[d, :, cells].T for d in winners])  # [4 winners, 4 corners, M]
    # a class below a mixture of classes at all four corners is below the best of them everywhere inside
    references = torch.cat([references, references.mean(dim=0, keepdim=True)]) - margin
    survives = None
    for reference in references:
        above = values[:, 0] >= reference[0]  # [C, M]
        for corner in range(1, 4):
            above |= values[:, corner] >= reference[corner]
        survives = above if survives is None else survives & above
    return survives.any(dim=1)


def winning_candidates(logits, chunk=64, cells_per_block=4096):
    """logits: [C, h, w] -> ascending class indices [K] that may be the arg-max of the bilinearly resized logits
    at some pixel, for any output size. Every other class is, in every cell and at all four corners, below one of
    the classes that win at the corners or below their mean."""
    C = logits.shape[0]
    largest = float(torch.stack(torch.aminmax(logits)).abs().max())
    margin = ROUNDING_MARGIN_EPS * torch.finfo(logits.dtype).eps * largest
    if not math.isfinite(margin):  # NaN or inf logits: no bound holds, resize every class
        return torch.arange(C, device=logits.device)
    best = logits.max(dim=0)  # [h, w]
    # cells whose corners share one winner: only classes tied with it at a corner can win inside
    keep = torch.cat([(logits[s:s + chunk] - best.values).flatten(1).amax(dim=1) >= -margin
                      for s in range(0, C, chunk)])
    winners = _cell_corners(best.indices)  # [4, h, w]
    rows, cols = (winners != winners[0]).any(dim=0).nonzero(as_tuple=True)
    for start in range(0, len(rows), cells_per_block):
        if keep.all():  # dense logits: nothing left to prune, stop early
            break
        block = slice(start, start + cells_per_block)
        keep |= _survivors_in_mixed_cells(logits, rows[block], cols[block], winners[:, rows[block], cols[block]],
                                          margin)
    return keep.nonzero().flatten()


def resized_argmax(logits, size, align_corners=False):
    """logits: [C, h, w] -> [1, H, W] long: arg-max of the bilinearly resized logits (first maximum wins, as in
    torch.argmax), resizing only the candidate classes and a few of them at a time."""
    classes = winning_candidates(logits)
    pruned = len(classes) < logits.shape[0]
    if pruned:
        logits = logits[classes]
    chunk = max(1, RESIZE_CHUNK_BYTES // (4 * size[0] * size[1]))
    best_val = best_idx = None
    for start in range(0, logits.shape[0], chunk):
        part = F.interpolate(logits[None, start:start + chunk], size=size, mode='bilinear',
                             align_corners=align_corners)[0]
        # max(dim) returns the first maximum's index like argmax, and is 6x faster than argmax across channels on CPU
        val, idx = part.max(dim=0, keepdim=True)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx + start, best_idx)
    return classes[best_idx] if pruned else best_idx
