"""mmseg's IoUMetric without rounding, returning per-class values too (percent)."""
import warnings

import numpy as np
from mmseg.evaluation import IoUMetric


class SegIoUMetric(IoUMetric):
    """-> {'aAcc', 'mIoU', 'mAcc', 'IoU': [K], 'Acc': [K]} in percent; classes never present in ground truth
    nor prediction are NaN and left out of the means (as in mmseg)."""

    def __init__(self, **kwargs):
        super().__init__(prefix='seg', **kwargs)

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
