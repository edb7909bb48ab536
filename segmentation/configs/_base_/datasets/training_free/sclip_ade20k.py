# SCLIP as its repository (wangf3014/SCLIP) evaluates ADE20K val (150 classes).
_base_ = ['./ade20k.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_ade20k.py; its README reports 16.45 mIoU'
