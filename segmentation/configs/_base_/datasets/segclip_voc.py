# SegCLIP protocol, Pascal VOC 2012 val (1,449 images), 20 classes + background (SegCLIP's names are GroupViT's).
_base_ = ['../segclip.py']
data_root = 'local_data/VOCdevkit/VOC2012'
dataset = dict(
    type='GroupViTPascalVOCDataset',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/val.txt')
test_cfg = dict(bg_thresh=0.80)
paper = 'SegCLIP (ICML 2023) zero-shot Pascal VOC 52.6'
