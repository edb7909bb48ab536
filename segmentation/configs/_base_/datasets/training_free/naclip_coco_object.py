# NACLIP as its repository (sinahmr/NACLIP) evaluates COCO-Object val2017 (80 classes + background).
_base_ = ['./coco_object.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_coco_object.py; its README reports 36.19 mIoU'
