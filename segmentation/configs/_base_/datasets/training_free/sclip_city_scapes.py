# SCLIP as its repository (wangf3014/SCLIP) evaluates Cityscapes val (19 classes).
_base_ = ['./city_scapes.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_city_scapes.py; its README reports 32.34 mIoU'
