# NACLIP as its repository (sinahmr/NACLIP) evaluates Cityscapes val (19 classes).
_base_ = ['./city_scapes.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_city_scapes.py; its README reports 38.27 mIoU'
