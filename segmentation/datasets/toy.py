"""The toy world's segmentation set (``tools/make_toy_data.py``): VOC layout, names from ``classes.json``."""
import json
import os.path as osp

from mmseg.datasets import BaseSegDataset, PascalVOCDataset
from mmseg.registry import DATASETS

from .errors import SegDataError


def read_toy_classes(path):
    """-> (('background', *names), palette or None) from a ``{"classes": [...], "palette": [...]}`` file."""
    if not osp.isfile(path):
        raise SegDataError(f'toy class list not found: {path} (run tools/make_toy_data.py --out <dir>)')
    try:
        with open(path) as f:
            meta = json.load(f)
        names = meta.get('classes')
    except (json.JSONDecodeError, AttributeError) as e:
        raise SegDataError(f'toy class list {path} is not a JSON object with "classes": {e}') from None
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise SegDataError(f'toy class list {path} must hold a non-empty list of names under "classes"')
    classes = ('background', *names)
    palette = meta.get('palette')
    return classes, palette if isinstance(palette, list) and len(palette) == len(classes) else None


@DATASETS.register_module()
class ToySegDataset(BaseSegDataset):
    """``<data_root>/JPEGImages/*.jpg`` + ``SegmentationClass/*.png`` (0 background, k = classes[k-1], 255 ignore).

    classes_file: relative to ``data_root`` (default ``../classes.json``, next to the ``voc`` folder).
    """
    METAINFO = dict()

    def __init__(self, data_root='', classes_file='../classes.json', metainfo=None, **kwargs):
        classes, palette = read_toy_classes(osp.normpath(osp.join(data_root, classes_file)))
        voc_colours = PascalVOCDataset.METAINFO['palette']
        if palette is None and len(classes) <= len(voc_colours):
            palette = voc_colours[:len(classes)]
        metainfo = dict(metainfo or {}, classes=classes, **({'palette': palette} if palette else {}))
        super().__init__(data_root=data_root, metainfo=metainfo, img_suffix='.jpg', seg_map_suffix='.png', **kwargs)
