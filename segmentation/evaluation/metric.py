"""mmseg's IoUMetric without rounding, returning per-class values too (percent)."""
import warnings

import numpy as np
from mmseg.evaluation import IoUMetric

# pixels whose areas are counted at once (about 30 bytes each while counting)
METRIC_BLOCK_PIXELS = 2**20


class SegIoUMetric(IoUMetric):
    """-> {'aAcc', 'mIoU', 'mAcc', 'IoU': [K], 'Acc': [K]} in percent; classes never present in ground truth
    nor prediction are NaN and left out of the means (as in mmseg)."""

    def __init__(self, **kwargs):
        super().__init__(prefix='seg', **kwargs)

    def process(self, data_batch, data_samples):
        """mmseg's per-image areas (intersection, union, prediction, label per class), counted over blocks of
        about METRIC_BLOCK_PIXELS pixels so that a many-megapixel image needs a few MiB instead of ~30 bytes a
        pixel; the counts are the same."""
        if self.format_only or self.output_dir is not None:
            return super().process(data_batch, data_samples)
        num_classes = len(self.dataset_meta['classes'])
        for sample in data_samples:
            pred = sample['pred_sem_seg']['data'].squeeze()
            label = sample['gt_sem_seg']['data'].squeeze().to(pred)
            rows = max(1, METRIC_BLOCK_PIXELS // pred.shape[-1]) if pred.dim() == 2 else len(pred)
            areas = [self.intersect_and_union(pred[r:r + rows], label[r:r + rows], num_classes, self.ignore_index)
                     for r in range(0, len(pred), rows)]
            self.results.append(tuple(sum(block[i].double() for block in areas) for i in range(4)))

    def evaluate(self, size):
        return {k.split('/', 1)[-1]: v for k, v in super().evaluate(size).items()}

    def compute_metrics(self, results):
        areas = [sum(r[i].cpu().double() for r in results) for i in range(4)]
        with np.errstate(divide='ignore', invalid='ignore'):
            m = self.total_area_to_metrics(*areas, metrics=['mIoU'])
        iou, acc = np.asarray(m['IoU'], np.float64) * 100, np.asarray(m['Acc'], np.float64) * 100
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', RuntimeWarning)
            return dict(aAcc=float(m['aAcc']) * 100, mIoU=float(np.nanmean(iou)), mAcc=float(np.nanmean(acc)),
                        IoU=iou.tolist(), Acc=acc.tolist())
