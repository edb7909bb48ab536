# NACLIP as its repository (sinahmr/NACLIP) evaluates ADE20K val (150 classes).
_base_ = ['./ade20k.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_ade20k.py; its README reports 19.05 mIoU'
