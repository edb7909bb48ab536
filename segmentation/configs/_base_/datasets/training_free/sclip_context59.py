# SCLIP as its repository (wangf3014/SCLIP) evaluates Pascal Context val without background (59 classes).
_base_ = ['./context59.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_context59.py; its README reports 34.46 mIoU'
