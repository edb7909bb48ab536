# TCL protocol, Pascal VOC 2012 val without background (20 classes; background pixels are ignored).
_base_ = ['../tcl.py']
data_root = 'local_data/VOCdevkit/VOC2012'
dataset = dict(
    type='PascalVOCDataset20',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/val.txt')
paper = 'TCL (CVPR 2023) Table 2, VOC20 column (with PAMR)'
