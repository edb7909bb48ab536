"""Label PNGs whose class ids go past 255, which mmseg's ``LoadAnnotations`` would cut to uint8.

Two encodings:
- ``rgb``: the ImageNet-S release (LUSSeg/ImageNet-S), an RGB PNG where class id = R + 256 * G (B is 0);
- ``gray``: a single-channel 8- or 16-bit PNG whose value is the class id (the LVIS maps read here).
"""
import os.path as osp

import numpy as np
from mmcv.transforms import BaseTransform
from mmseg.datasets import BaseSegDataset
from mmseg.registry import TRANSFORMS
from PIL import Image

from .errors import SegDataError

LABEL_ENCODINGS = ('rgb', 'gray')
GRAY_MODES = ('L', 'I;16', 'I;16B', 'I')


def encode_rgb_label_ids(ids):
    """ids: [H, W] integer class ids in 0..65535 -> [H, W, 3] uint8 (R = id % 256, G = id // 256, B = 0)."""
    ids = np.asarray(ids)
    if ids.min(initial=0) < 0 or ids.max(initial=0) > 65535:
        raise ValueError('RGB label ids must lie in 0..65535')
    rgb = np.zeros(ids.shape + (3, ), np.uint8)
    rgb[..., 0] = ids % 256
    rgb[..., 1] = ids // 256
    return rgb


def read_label_ids(path, encoding):
    """-> [H, W] int32 class ids of one label PNG; SegDataError (one line naming the file) when its mode does not
    fit the encoding."""
    if encoding not in LABEL_ENCODINGS:
        raise ValueError(f'label encoding must be one of {LABEL_ENCODINGS}, got {encoding!r}')
    try:
        with Image.open(path) as img:
            mode = img.mode
            if encoding == 'rgb' and mode == 'RGB':
                rgb = np.asarray(img)
                return rgb[..., 0].astype(np.int32) + 256 * rgb[..., 1].astype(np.int32)
            if encoding == 'gray' and mode in GRAY_MODES:
                return np.asarray(img).astype(np.int32)
    except OSError as e:
        raise SegDataError(f'cannot read label PNG {path}: {e}') from None
    wanted = 'RGB (class id = R + 256 * G)' if encoding == 'rgb' else '8- or 16-bit single-channel'
    raise SegDataError(f'label PNG {path} has mode {mode}; expected {wanted}')


def check_label_ids(ids, num_classes, ignore_index, path):
    """Every id is a class (0..num_classes-1) or the ignore value; else SegDataError naming the file."""
    bad = (ids >= num_classes) & (ids != ignore_index)
    bad |= ids < 0
    if bad.any():
        values = np.unique(ids[bad])
        shown = ', '.join(str(v) for v in values[:5]) + (', ...' if len(values) > 5 else '')
        raise SegDataError(f'label PNG {path} holds ids {shown}: neither a class (0..{num_classes - 1}) nor the '
                           f'ignore value {ignore_index}')


@TRANSFORMS.register_module()
class LoadLabelIds(BaseTransform):
    """Pipeline step in place of ``LoadAnnotations``: ``results['seg_map_path']`` -> ``results['gt_seg_map']``
    [H, W] int32 class ids, checked against ``results['num_classes']`` / ``results['ignore_index']`` when the
    dataset provides them (ImageNetSDataset and LVISDataset do)."""

    def __init__(self, encoding):
        if encoding not in LABEL_ENCODINGS:
            raise ValueError(f'LoadLabelIds: encoding must be one of {LABEL_ENCODINGS}, got {encoding!r}')
        self.encoding = encoding

    def transform(self, results):
        path = results['seg_map_path']
        ids = read_label_ids(path, self.encoding)
        if 'num_classes' in results:
            check_label_ids(ids, results['num_classes'], results['ignore_index'], path)
        results['gt_seg_map'] = ids
        results.setdefault('seg_fields', []).append('gt_seg_map')
        return results

    def __repr__(self):
        return f'{self.__class__.__name__}(encoding={self.encoding!r})'


class WideLabelDataset(BaseSegDataset):
    """A BaseSegDataset whose label PNGs are read by ``LoadLabelIds(encoding=LABEL_ENCODING)`` (subclasses set
    it): every sample carries ``num_classes`` and ``ignore_index`` for the range check, and the first mask's
    encoding is checked when the dataset is built, so a wrong kind of PNG is one error line before the model is
    loaded."""
    LABEL_ENCODING = None

    def __init__(self, pipeline=(), **kwargs):
        for step in pipeline:
            kind = step.get('type') if isinstance(step, dict) else None
            if kind == 'LoadAnnotations' or (kind == 'LoadLabelIds' and step.get('encoding') != self.LABEL_ENCODING):
                raise SegDataError(f'{type(self).__name__}: its test pipeline must read masks with LoadLabelIds('
                                   f'encoding={self.LABEL_ENCODING!r}), not {kind}({dict(step)})')
        super().__init__(pipeline=list(pipeline), **kwargs)
        first = self.get_data_info(0).get('seg_map_path') if len(self) else None
        if first is not None and osp.isfile(first):
            read_label_ids(first, self.LABEL_ENCODING)

    def load_data_list(self):
        data_list = super().load_data_list()
        for info in data_list:
            info.update(num_classes=len(self.metainfo['classes']), ignore_index=self.ignore_index)
        return data_list
