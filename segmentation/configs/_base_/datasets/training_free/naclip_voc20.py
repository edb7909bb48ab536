# NACLIP as its repository (sinahmr/NACLIP) evaluates Pascal VOC 2012 val without background (20 classes).
_base_ = ['./voc20.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_voc20.py; its README reports 83.03 mIoU'
