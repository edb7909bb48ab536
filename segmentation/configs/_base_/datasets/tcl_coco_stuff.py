# TCL protocol, COCO-Stuff-164k val2017 (171 classes, `*_labelTrainIds.png` from mmseg's converter).
_base_ = ['../tcl.py']
data_root = 'local_data/coco'
dataset = dict(
    type='COCOStuffDataset', data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'))
paper = 'TCL (CVPR 2023) Table 2, Stuff column (with PAMR)'
