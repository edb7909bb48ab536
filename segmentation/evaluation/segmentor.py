"""mmseg ``EncoderDecoder`` around any method: mmseg's slide / whole inference and post-processing, with the
method's :func:`zero_shot_logits` as the per-crop decoder."""
import torch
from mmengine.config import ConfigDict
from mmengine.structures import PixelData
from mmseg.models import EncoderDecoder
from mmseg.models.segmentors.base import BaseSegmentor
from mmseg.registry import MODELS

from .resize import resized_argmax
from .zero_shot import method_options, zero_shot_logits

# test_cfg.precision -> autocast dtype of the image encoder (None: float32, the published arithmetic)
PRECISIONS = {'float32': None, 'bfloat16': torch.bfloat16, 'float16': torch.float16}


def slide_windows(h_img, w_img, crop_size, stride):
    """-> [(y1, y2, x1, x2)] of mmseg's sliding window (last row / column aligned to the border)."""
    (h_crop, w_crop), (h_stride, w_stride) = crop_size, stride
    h_grids = max(h_img - h_crop + h_stride - 1, 0) // h_stride + 1
    w_grids = max(w_img - w_crop + w_stride - 1, 0) // w_stride + 1
    windows = []
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2 = min(h_idx * h_stride + h_crop, h_img)
            x2 = min(w_idx * w_stride + w_crop, w_img)
            windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
    return windows


@MODELS.register_module()
class ZeroShotSegmentor(EncoderDecoder):
    """model: a method (models/base.py); text_embedding: [N, C] foreground classes; with_bg: output 0 is
    background; test_cfg: see segmentation/configs/_base_/zero_shot.py (the entries the method's
    zero_shot_logits names are passed to it, `precision` as `amp_dtype`)."""

    def __init__(self, model, text_embedding, with_bg, test_cfg, data_preprocessor=None):
        BaseSegmentor.__init__(self, data_preprocessor=data_preprocessor)
        self.model = model
        self.register_buffer('text_embedding', text_embedding)
        self.with_bg = with_bg
        self.test_cfg = ConfigDict(test_cfg)
        precision = self.test_cfg.get('precision', 'float32')
        if precision not in PRECISIONS:
            raise ValueError(f'test_cfg.precision must be one of {tuple(PRECISIONS)}, got {precision!r}')
        self.method_options = method_options(model, {**self.test_cfg, 'amp_dtype': PRECISIONS[precision]})
        self.num_classes = self.out_channels = len(text_embedding) + int(with_bg)
        self.align_corners = False

    def encode_decode(self, inputs, batch_img_metas=None):
        """inputs: [B, 3, H, W] normalised crops -> logits [B, num_classes, H, W]."""
        return zero_shot_logits(self.model, inputs, self.text_embedding, self.with_bg, self.test_cfg.bg_thresh,
                                **self.method_options)

    def slide_inference(self, inputs, batch_img_metas):
        """mmseg's sliding window, with `crop_batch` crops encoded together (same windows, same sums)."""
        crop_batch = self.test_cfg.get('crop_batch', 1)
        if crop_batch <= 1 or inputs.shape[0] != 1:
            return super().slide_inference(inputs, batch_img_metas)
        h_img, w_img = inputs.shape[-2:]
        windows = slide_windows(h_img, w_img, self.test_cfg.crop_size, self.test_cfg.stride)
        preds = inputs.new_zeros((1, self.out_channels, h_img, w_img))
        count = inputs.new_zeros((1, 1, h_img, w_img))
        for start in range(0, len(windows), crop_batch):
            batch = windows[start:start + crop_batch]
            crops = torch.cat([inputs[:, :, y1:y2, x1:x2] for y1, y2, x1, x2 in batch])
            logits = self.encode_decode(crops, batch_img_metas)
            for (y1, y2, x1, x2), crop_logits in zip(batch, logits):
                preds[:, :, y1:y2, x1:x2] += crop_logits
                count[:, :, y1:y2, x1:x2] += 1
        return preds / count

    def postprocess_result(self, seg_logits, data_samples=None):
        """Arg-max at the original image size; the full-size logits are never held for all classes at once."""
        if data_samples is None:
            return super().postprocess_result(seg_logits, data_samples)
        H, W = seg_logits.shape[-2:]
        for logits, sample in zip(seg_logits, data_samples):
            left, right, top, bottom = sample.metainfo.get('padding_size', [0] * 4)
            logits = logits[:, top:H - bottom, left:W - right]
            pred = resized_argmax(logits, tuple(sample.metainfo['ori_shape']), self.align_corners)
            sample.set_data({'pred_sem_seg': PixelData(data=pred)})
        return data_samples
