# NACLIP as its repository (sinahmr/NACLIP) evaluates Pascal Context val with background (60 classes).
_base_ = ['./context60.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_context60.py; its README reports 34.99 mIoU'
