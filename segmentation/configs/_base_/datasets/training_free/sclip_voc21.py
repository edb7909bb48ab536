# SCLIP as its repository (wangf3014/SCLIP) evaluates Pascal VOC 2012 val with background (21 classes).
_base_ = ['./voc21.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_voc21.py; its README reports 59.63 mIoU'
