# TCL protocol, ADE20K val (150 classes; label 0 "other" is ignored).
_base_ = ['../tcl.py']
data_root = 'local_data/ade/ADEChallengeData2016'
dataset = dict(
    type='ADE20KDataset', data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'))
paper = 'TCL (CVPR 2023) Table 2, ADE column (with PAMR)'
