# SegCLIP protocol, Pascal Context val (5,105 images), 59 classes + background (SegCLIP's names are GroupViT's).
_base_ = ['../segclip.py']
data_root = 'local_data/VOCdevkit/VOC2010'
dataset = dict(
    type='GroupViTPascalContextDataset',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
    ann_file='ImageSets/SegmentationContext/val.txt')
test_cfg = dict(bg_thresh=0.25)
paper = 'SegCLIP (ICML 2023) zero-shot Pascal Context 24.7'
