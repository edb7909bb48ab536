"""Labels at the original image size: arg-max of bilinearly resized logits without resizing every class.

mmseg resizes all class maps to the original image and takes the arg-max. For many classes and large images that
is most of the evaluation time (151 classes at 2000x3000: 906M resized values) and memory (3.6 GB). The labels
are the same when only the classes that can win somewhere are resized: a bilinear output pixel is a weighted mean
of one 2x2 neighbourhood (cell) of the input, so a class that is below another class at all four corners of a
cell (or below a weighted mean of other classes) is below it everywhere inside the cell.

The compact_* functions take the logits as a code map and one row per code (``compact.CompactLogits``) and give
the same candidates and labels without laying out more than a chunk of candidate classes as maps.
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


def _survivors_in_mixed_cells(values, winners, margin):
    """values: [C, 4, M] logits at the four corners of M cells whose corners have different winners (winners:
    [4, M]) -> [C] bool: classes not below, at all four corners, one of the corner winners or their mean, in at
    least one of the cells."""
    cells = torch.arange(values.shape[2], device=values.device)
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


def _rounding_margin(values):
    """-> the float-rounding margin for logits `values`, or None when they hold NaN or inf (no bound holds)."""
    largest = float(torch.stack(torch.aminmax(values)).abs().max())
    margin = ROUNDING_MARGIN_EPS * torch.finfo(values.dtype).eps * largest
    return margin if math.isfinite(margin) else None


def _add_mixed_cell_survivors(keep, best_indices, corner_values, margin, cells_per_block):
    """keep: [C] bool, updated in place; best_indices: [h, w] arg-max class of every input pixel; corner_values:
    (row index [4, M], column index [4, M]) -> [C, 4, M] logits there."""
    h, w = best_indices.shape
    winners = _cell_corners(best_indices)  # [4, h, w]
    rows, cols = (winners != winners[0]).any(dim=0).nonzero(as_tuple=True)
    for start in range(0, len(rows), cells_per_block):
        if keep.all():  # dense logits: nothing left to prune, stop early
            break
        r, c = rows[start:start + cells_per_block], cols[start:start + cells_per_block]
        below, right = (r + 1).clamp(max=h - 1), (c + 1).clamp(max=w - 1)
        values = corner_values(torch.stack([r, r, below, below]), torch.stack([c, right, c, right]))
        keep |= _survivors_in_mixed_cells(values, winners[:, r, c], margin)
    return keep


def winning_candidates(logits, chunk=64, cells_per_block=4096):
    """logits: [C, h, w] -> ascending class indices [K] that may be the arg-max of the bilinearly resized logits
    at some pixel, for any output size. Every other class is, in every cell and at all four corners, below one of
    the classes that win at the corners or below their mean."""
    C = logits.shape[0]
    margin = _rounding_margin(logits)
    if margin is None:
        return torch.arange(C, device=logits.device)
    best = logits.max(dim=0)  # [h, w]
    # cells whose corners share one winner: only classes tied with it at a corner can win inside
    keep = torch.cat([(logits[s:s + chunk] - best.values).flatten(1).amax(dim=1) >= -margin
                      for s in range(0, C, chunk)])
    keep = _add_mixed_cell_survivors(keep, best.indices, lambda rows, cols: logits[:, rows, cols], margin,
                                     cells_per_block)
    return keep.nonzero().flatten()


def _chunked_resized_argmax(class_logits, num_classes, size, align_corners):
    """class_logits(start, stop): [stop - start, h, w] logits of classes start..stop-1 (of num_classes) -> [1, H, W]
    long: the first class with the largest bilinearly resized logit, a few classes resized at a time."""
    chunk = max(1, RESIZE_CHUNK_BYTES // (4 * size[0] * size[1]))
    best_val = best_idx = None
    for start in range(0, num_classes, chunk):
        part = F.interpolate(class_logits(start, min(start + chunk, num_classes))[None], size=size,
                             mode='bilinear', align_corners=align_corners)[0]
        # max(dim) returns the first maximum's index like argmax, and is 6x faster than argmax across channels on CPU
        val, idx = part.max(dim=0, keepdim=True)
        del part  # freed before the next chunk is resized
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            torch.where(better, val, best_val, out=best_val)
            torch.where(better, idx.add_(start), best_idx, out=best_idx)
    return best_idx


def resized_argmax(logits, size, align_corners=False):
    """logits: [C, h, w] -> [1, H, W] long: arg-max of the bilinearly resized logits (first maximum wins, as in
    torch.argmax), resizing only the candidate classes and a few of them at a time."""
    classes = winning_candidates(logits)
    pruned = len(classes) < logits.shape[0]
    if pruned:
        logits = logits[classes]
    best_idx = _chunked_resized_argmax(lambda start, stop: logits[start:stop], logits.shape[0], size, align_corners)
    return classes[best_idx] if pruned else best_idx


def renumber(values, size):
    """values: long tensor in 0..size-1 -> (the values present, ascending [U]; values renumbered 0..U-1), as
    torch.unique(values, return_inverse=True) but in linear time for a small `size`."""
    present = torch.zeros(size, dtype=torch.bool, device=values.device)
    present[values] = True
    new_number = present.cumsum(0) - 1
    return present.nonzero().flatten(), new_number[values]


def used_rows(code, table):
    """code: [h, w] long rows of table [K, C] -> (code, table) renumbered to the rows some pixel uses, in order."""
    rows, code = renumber(code, len(table))
    return code, table[rows]


def compact_winning_candidates(code, table, cells_per_block=4096):
    """The logits [C, h, w] = table[code].permute(2, 0, 1) given as code: [h, w] long and table: [K, C], every row
    used -> the candidate classes winning_candidates gives for those logits, without building them."""
    margin = _rounding_margin(table)
    if margin is None:
        return torch.arange(table.shape[1], device=table.device)
    best = table.max(dim=1)  # [K]
    keep = (table - best.values[:, None]).amax(dim=0) >= -margin
    keep = _add_mixed_cell_survivors(keep, best.indices[code], lambda rows, cols: table[code[rows, cols]].permute(
        2, 0, 1), margin, cells_per_block)
    return keep.nonzero().flatten()


def compact_resized_argmax(code, table, size, align_corners=False):
    """code: [h, w] long, table: [K, C] (logits[:, y, x] = table[code[y, x]]) -> [1, H, W] long, the labels
    resized_argmax gives for the dense logits; only candidate classes are ever laid out as maps, a few at a
    time."""
    code, table = used_rows(code, table)
    classes = compact_winning_candidates(code, table)
    by_class = table.T[classes].contiguous()  # [K', rows]

    def class_logits(start, stop):
        return by_class[start:stop][:, code]  # [stop - start, h, w]

    return classes[_chunked_resized_argmax(class_logits, len(classes), size, align_corners)]
