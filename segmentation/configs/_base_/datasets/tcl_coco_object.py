# TCL protocol, COCO-Object val2017 (80 things + background, COCO names).
_base_ = ['../tcl.py']
data_root = 'local_data/coco'
dataset = dict(
    type='COCOObjectDataset', data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'))
paper = 'TCL (CVPR 2023) Table 2, Object column (with PAMR)'
