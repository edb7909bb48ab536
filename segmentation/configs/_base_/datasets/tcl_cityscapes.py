# TCL protocol, Cityscapes val (19 classes, `*_gtFine_labelTrainIds.png` from mmseg's converter).
_base_ = ['../tcl.py']
data_root = 'local_data/cityscapes'
dataset = dict(
    type='CityscapesDataset', data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'))
paper = 'TCL (CVPR 2023) Table 2, City column (with PAMR)'
