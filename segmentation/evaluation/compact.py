"""Sliding-window logits of hundreds of classes without a [classes, H, W] tensor.

Without PAMR, a crop's logits at a pixel are one row of a [G, classes] table: the affinities of the final group
the pixel is assigned to (and the background decision, which depends on that row only). The window average of
mmseg's sliding window is then the same at every pixel that falls in the same group of every window covering it,
so the image's logits are exactly ``table[code]``: a map ``code`` [H, W] of group combinations and one summed
row per combination, added window by window in mmseg's order and divided by the window count, i.e. the same
float operations as the dense accumulator, element for element. Memory: O(H * W + combinations * classes) instead
of O(classes * H * W) for the accumulator and O(crop_batch * classes * crop area) for the crop logits.
"""
from dataclasses import dataclass

import torch
from mmengine.structures import PixelData
from mmseg.registry import MODELS
from mmseg.structures import SegDataSample

from .resize import compact_resized_argmax, renumber, resized_argmax, used_rows
from .segmentor import ZeroShotSegmentor, slide_windows


@dataclass
class CompactLogits:
    """Logits [C, H, W] of one image stored as logits[:, y, x] == table[code[y, x]].

    code: [H, W] long; table: [K, C] (C = classes, background first when there is one)."""
    code: torch.Tensor
    table: torch.Tensor

    @property
    def shape(self):
        return (self.table.shape[1], *self.code.shape)

    def dense(self):
        """-> [C, H, W] (for checks on small images)."""
        return self.table[self.code].permute(2, 0, 1)


class GroupCombinations:
    """Accumulator of per-window group rows over an [H, W] image: every pixel's code names the sequence of
    (window, group) it has been given, and table[code] holds the sum of those rows in the order they came."""

    def __init__(self, h, w, num_classes, device, dtype):
        self.code = torch.zeros(h, w, dtype=torch.long, device=device)  # 0: no window yet
        self.table = torch.zeros(1, num_classes, device=device, dtype=dtype)
        self.count = torch.zeros(1, device=device, dtype=dtype)

    def add(self, window, labels, rows):
        """window: (y1, y2, x1, x2); labels: [y2 - y1, x2 - x1] long group of each pixel; rows: [G, C]."""
        y1, y2, x1, x2 = window
        key = self.code[y1:y2, x1:x2] * rows.shape[0] + labels
        keys, inverse = renumber(key, len(self.table) * rows.shape[0])
        previous, group = keys // rows.shape[0], keys % rows.shape[0]
        self.code[y1:y2, x1:x2] = len(self.table) + inverse
        self.table = torch.cat([self.table, self.table[previous] + rows[group]])
        self.count = torch.cat([self.count, self.count[previous] + 1])

    def drop_unused(self):
        """Keep only the rows some pixel still refers to (rows are appended, never overwritten)."""
        rows, self.code = renumber(self.code, len(self.table))
        self.table, self.count = self.table[rows], self.count[rows]

    def mean(self):
        """-> CompactLogits of the window average (sum / count, as mmseg's preds / count_mat)."""
        self.drop_unused()
        return CompactLogits(self.code, self.table / self.count[:, None])


@MODELS.register_module()
class CompactZeroShotSegmentor(ZeroShotSegmentor):
    """ZeroShotSegmentor whose inference returns CompactLogits (batch of one image, pamr=False) and whose labels at
    the original size come from them: the same labels as the dense path, in memory that does not grow with the
    number of classes times the image area. test_cfg: as ZeroShotSegmentor's."""

    def __init__(self, model, text_embedding, with_bg, test_cfg, data_preprocessor=None):
        super().__init__(model, text_embedding, with_bg, test_cfg, data_preprocessor)
        if self.test_cfg.get('pamr'):
            raise ValueError('test_cfg.compact_logits needs test_cfg.pamr=False (PAMR mixes pixels of different '
                             'groups)')
        if not hasattr(model, 'zero_shot_group_rows'):
            raise ValueError(f'test_cfg.compact_logits needs a method whose pixels take their group\'s logits; '
                             f'{type(model).__name__} has no zero_shot_group_rows')

    def group_rows(self, crops):
        """crops: [B, 3, h, w] -> (group of every pixel [B, h, w] long, rows [B, G, C]: each group's logits, the
        background (when there is one) first, exactly the values encode_decode gives its pixels)."""
        return self.model.zero_shot_group_rows(crops, self.text_embedding, self.with_bg, self.test_cfg.bg_thresh,
                                               **self.method_options)

    def compact_inference(self, inputs):
        """inputs: [1, 3, H, W] -> CompactLogits [num_classes, H, W] of mmseg's slide (or whole) inference."""
        h_img, w_img = inputs.shape[-2:]
        if self.test_cfg.mode == 'slide':
            windows = slide_windows(h_img, w_img, self.test_cfg.crop_size, self.test_cfg.stride)
        else:
            windows = [(0, h_img, 0, w_img)]
        crop_batch = max(1, self.test_cfg.get('crop_batch', 1))
        combos = GroupCombinations(h_img, w_img, self.out_channels, inputs.device, inputs.dtype)
        for start in range(0, len(windows), crop_batch):
            batch = windows[start:start + crop_batch]
            crops = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in batch])
            labels, rows = self.group_rows(crops)
            for window, crop_labels, crop_rows in zip(batch, labels, rows):
                combos.add(window, crop_labels, crop_rows)
            combos.drop_unused()
        return combos.mean()

    def inference(self, inputs, batch_img_metas):
        """[1, 3, H, W] -> CompactLogits; a batch of several images takes the dense path."""
        if inputs.shape[0] != 1:
            return super().inference(inputs, batch_img_metas)
        if self.test_cfg.mode not in ('slide', 'whole'):
            raise ValueError(f"test_cfg.mode must be 'slide' or 'whole', got {self.test_cfg.mode!r}")
        return self.compact_inference(inputs)

    def postprocess_result(self, seg_logits, data_samples=None):
        """Labels at the original size from CompactLogits (see resize.compact_resized_argmax); without
        data_samples, labels at the input size."""
        if not isinstance(seg_logits, CompactLogits):
            return super().postprocess_result(seg_logits, data_samples)
        code, table = seg_logits.code, seg_logits.table
        if data_samples is None:
            return [SegDataSample(pred_sem_seg=PixelData(data=table.argmax(dim=1)[code][None]))]
        sample = data_samples[0]
        H, W = code.shape
        left, right, top, bottom = sample.metainfo.get('padding_size', [0] * 4)
        code, table = used_rows(code[top:H - bottom, left:W - right], table)
        pred = compact_resized_argmax(code, table, tuple(sample.metainfo['ori_shape']), self.align_corners)
        sample.set_data({'pred_sem_seg': PixelData(data=pred)})
        return data_samples


def build_zero_shot_segmentor(model, text_embedding, with_bg, test_cfg, data_preprocessor=None):
    """CompactZeroShotSegmentor when test_cfg.compact_logits is set, else ZeroShotSegmentor (same arguments)."""
    segmentor = CompactZeroShotSegmentor if test_cfg.get('compact_logits') else ZeroShotSegmentor
    return segmentor(model, text_embedding, with_bg, test_cfg, data_preprocessor=data_preprocessor)


def labels_at_size(logits, size, align_corners=False):
    """One image's logits as a segmentor's inference returns them ([1, C, h, w], [C, h, w] or CompactLogits) ->
    [1, H, W] long labels of the logits resized to `size`."""
    if isinstance(logits, CompactLogits):
        return compact_resized_argmax(logits.code, logits.table, size, align_corners)
    if logits.dim() == 4:
        if logits.shape[0] != 1:
            raise ValueError(f'labels_at_size takes one image, got a batch of {logits.shape[0]}')
        logits = logits[0]
    return resized_argmax(logits, size, align_corners)
