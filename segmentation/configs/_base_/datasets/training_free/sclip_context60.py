# SCLIP as its repository (wangf3014/SCLIP) evaluates Pascal Context val with background (60 classes).
_base_ = ['./context60.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_context60.py; its README reports 31.74 mIoU'
