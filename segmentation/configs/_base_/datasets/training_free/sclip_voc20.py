# SCLIP as its repository (wangf3014/SCLIP) evaluates Pascal VOC 2012 val without background (20 classes).
_base_ = ['./voc20.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_voc20.py; its README reports 81.54 mIoU'
