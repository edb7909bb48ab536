# TCL protocol, Pascal Context val without background (59 classes; background pixels are ignored).
_base_ = ['../tcl.py']
data_root = 'local_data/VOCdevkit/VOC2010'
dataset = dict(
    type='PascalContextDataset59',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClassContext'),
    ann_file='ImageSets/SegmentationContext/val.txt')
paper = 'TCL (CVPR 2023) Table 2, Context59 column (with PAMR)'
