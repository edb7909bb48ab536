"""Pascal Context (59 classes + background) with the prompt names of GroupViT."""
from mmseg.datasets import PascalContextDataset
from mmseg.registry import DATASETS

GROUPVIT_CONTEXT_CLASSES = (
    'background', 'airplane', 'bag', 'bed', 'bedclothes', 'bench', 'bicycle', 'bird', 'boat', 'book', 'bottle',
    'building', 'bus', 'cabinet', 'car', 'cat', 'ceiling', 'chair', 'cloth', 'computer', 'cow', 'cup', 'curtain',
    'dog', 'door', 'fence', 'floor', 'flower', 'food', 'grass', 'ground', 'horse', 'keyboard', 'light', 'motorbike',
    'mountain', 'mouse', 'person', 'plate', 'platform', 'plant', 'road', 'rock', 'sheep', 'shelves', 'sidewalk',
    'sign', 'sky', 'snow', 'sofa', 'table', 'track', 'train', 'tree', 'truck', 'monitor', 'wall', 'water', 'window',
    'wood')


@DATASETS.register_module()
class GroupViTPascalContextDataset(PascalContextDataset):
    """Pascal Context 60 (index 0 = background), named as in GroupViT's evaluation."""
    METAINFO = dict(classes=GROUPVIT_CONTEXT_CLASSES, palette=PascalContextDataset.METAINFO['palette'])
