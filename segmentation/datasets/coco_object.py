"""COCO-Object: background + the 80 thing classes of COCO, from GroupViT's conversion of COCO-Stuff-164k."""
from mmseg.datasets import BaseSegDataset, COCOStuffDataset
from mmseg.registry import DATASETS

COCO_OBJECT_CLASSES = ('background', ) + COCOStuffDataset.METAINFO['classes'][:80]


@DATASETS.register_module()
class COCOObjectDataset(BaseSegDataset):
    """``images/val2017/*.jpg`` with ``annotations/val2017/*_instanceTrainIds.png`` (0 background, 1..80 things)."""
    METAINFO = dict(classes=COCO_OBJECT_CLASSES, palette=[[0, 0, 0]] + COCOStuffDataset.METAINFO['palette'][:80])

    def __init__(self, img_suffix='.jpg', seg_map_suffix='_instanceTrainIds.png', **kwargs):
        super().__init__(img_suffix=img_suffix, seg_map_suffix=seg_map_suffix, **kwargs)
