"""LVIS v1 as PGSeg's repository evaluates it: background + LVIS's 1203 categories, prompted with PGSeg's names.

Layout (PGSeg's ``segmentation/configs/_base_/datasets/Lvis.py``)::

    images/<name>.jpg
    annotations/<name>.png       single-channel 8- or 16-bit PNG: 0 background, k = k-th category, 65535 ignored
    split/val_lvis.txt           one <name> a line

LVIS releases instance polygons only; PGSeg does not publish how it made its semantic maps, so the map format
above is this project's (16 bits hold the 1203 ids; mmseg's 8-bit ``LoadAnnotations`` cannot), and
``convert_dataset/convert_lvis.py`` writes it from LVIS's json.
"""
import json
import os.path as osp

from mmseg.registry import DATASETS

from .label_ids import WideLabelDataset

LVIS_IGNORE = 65535
CLASS_LIST = osp.join(osp.dirname(osp.abspath(__file__)), 'class_lists', 'lvis.json')


def lvis_classes():
    """-> ('background', *PGSeg's 1203 LVIS prompts) in label-id order."""
    with open(CLASS_LIST) as f:
        return ('background', *json.load(f)['pgseg_names'])


@DATASETS.register_module()
class LVISDataset(WideLabelDataset):
    """LVIS val with PGSeg's class names (index 0 = background); masks read by ``LoadLabelIds(encoding='gray')``."""
    METAINFO = dict(classes=lvis_classes())
    LABEL_ENCODING = 'gray'

    def __init__(self, img_suffix='.jpg', seg_map_suffix='.png', ignore_index=LVIS_IGNORE, **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, ignore_index=ignore_index, **kwargs)
