"""Pascal VOC 2012 with the prompt names of GroupViT, and TCL's 20-class variant without background."""
from mmseg.datasets import PascalVOCDataset
from mmseg.registry import DATASETS

# GroupViT's prompts shorten three of mmseg's names: diningtable -> table, pottedplant -> plant, tvmonitor -> monitor
GROUPVIT_VOC_CLASSES = (
    'background', 'aeroplane', 'bicycle', 'bird', 'boat', 'bottle', 'bus', 'car', 'cat', 'chair', 'cow', 'table',
    'dog', 'horse', 'motorbike', 'person', 'plant', 'sheep', 'sofa', 'train', 'monitor')


@DATASETS.register_module()
class GroupViTPascalVOCDataset(PascalVOCDataset):
    """VOC 2012, 20 classes + background (index 0), named as in GroupViT's evaluation."""
    METAINFO = dict(classes=GROUPVIT_VOC_CLASSES, palette=PascalVOCDataset.METAINFO['palette'])


@DATASETS.register_module()
class PascalVOCDataset20(PascalVOCDataset):
    """VOC 2012 without background: label 0 becomes ignore (255), the 20 objects are 0..19 (mmseg's names)."""
    METAINFO = dict(classes=PascalVOCDataset.METAINFO['classes'][1:],
                    palette=PascalVOCDataset.METAINFO['palette'][1:])

    def __init__(self, ann_file, reduce_zero_label=True, **kwargs):
        super().__init__(ann_file=ann_file, reduce_zero_label=reduce_zero_label, **kwargs)
