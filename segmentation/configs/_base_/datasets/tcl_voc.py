# TCL protocol, Pascal VOC 2012 val with background (21 classes, mmseg names).
_base_ = ['../tcl.py']
data_root = 'local_data/VOCdevkit/VOC2012'
dataset = dict(
    type='PascalVOCDataset',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/val.txt')
paper = 'TCL (CVPR 2023) Table 2, VOC column (with PAMR)'
