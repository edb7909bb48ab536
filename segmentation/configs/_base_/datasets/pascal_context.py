# GroupViT protocol, Pascal Context val (5,105 images), 59 classes + background, GroupViT's prompt names.
_base_ = ['../zero_shot.py']
data_root = 'local_data/VOCdevkit/VOC2010'
dataset = dict(
    type='GroupViTPascalContextDataset',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
    ann_file='ImageSets/SegmentationContext/val.txt')
test_cfg = dict(bg_thresh=0.35)
protocol = 'GroupViT'
paper = 'GroupViT (CVPR 2022) zero-shot Pascal Context: 22.4 (gcc_yfcc), 23.7 (gcc_redcap); template simple'
