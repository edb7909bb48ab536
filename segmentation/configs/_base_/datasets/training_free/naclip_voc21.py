# NACLIP as its repository (sinahmr/NACLIP) evaluates Pascal VOC 2012 val with background (21 classes).
_base_ = ['./voc21.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_voc21.py; its README reports 64.07 mIoU'
