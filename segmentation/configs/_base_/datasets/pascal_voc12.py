# GroupViT protocol, Pascal VOC 2012 val (1,449 images), 20 classes + background, GroupViT's prompt names.
_base_ = ['../zero_shot.py']
data_root = 'local_data/VOCdevkit/VOC2012'
dataset = dict(
    type='GroupViTPascalVOCDataset',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/val.txt')
test_cfg = dict(bg_thresh=0.95)
protocol = 'GroupViT'
paper = 'GroupViT (CVPR 2022) zero-shot Pascal VOC: 52.3 (gcc_yfcc), 50.8 (gcc_redcap); template simple'
