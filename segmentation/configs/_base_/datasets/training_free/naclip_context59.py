# NACLIP as its repository (sinahmr/NACLIP) evaluates Pascal Context val without background (59 classes).
_base_ = ['./context59.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_context59.py; its README reports 38.35 mIoU'
