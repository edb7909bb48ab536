"""Benchmark datasets for zero-shot segmentation (registered in mmseg's DATASETS) and their data checks."""
from .checks import check_dataset_cfg, check_samples
from .coco_object import COCO_OBJECT_CLASSES, COCOObjectDataset
from .errors import SegDataError
from .imagenet_s import (IMAGENET_S_IGNORE, IMAGENET_S_VERSIONS, ImageNetS50Dataset, ImageNetS300Dataset,
                         ImageNetS919Dataset, ImageNetSDataset, imagenet_s_classes, imagenet_s_wnids)
from .label_ids import LoadLabelIds, encode_rgb_label_ids, read_label_ids
from .lvis import LVIS_IGNORE, LVISDataset, lvis_classes
from .pascal_context import GROUPVIT_CONTEXT_CLASSES, GroupViTPascalContextDataset
from .pascal_voc import GROUPVIT_VOC_CLASSES, GroupViTPascalVOCDataset, PascalVOCDataset20
from .toy import ToySegDataset, read_toy_classes

__all__ = [
    'SegDataError', 'check_dataset_cfg', 'check_samples', 'COCOObjectDataset', 'GroupViTPascalContextDataset',
    'GroupViTPascalVOCDataset', 'PascalVOCDataset20', 'ToySegDataset', 'read_toy_classes', 'COCO_OBJECT_CLASSES',
    'GROUPVIT_CONTEXT_CLASSES', 'GROUPVIT_VOC_CLASSES', 'ImageNetSDataset', 'ImageNetS50Dataset',
    'ImageNetS300Dataset', 'ImageNetS919Dataset', 'imagenet_s_classes', 'imagenet_s_wnids',
    'IMAGENET_S_VERSIONS', 'IMAGENET_S_IGNORE', 'LVISDataset', 'lvis_classes', 'LVIS_IGNORE', 'LoadLabelIds',
    'encode_rgb_label_ids', 'read_label_ids'
]
