# SCLIP as its repository (wangf3014/SCLIP) evaluates COCO-Object val2017 (80 classes + background).
_base_ = ['./coco_object.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_coco_object.py; its README reports 33.52 mIoU'
