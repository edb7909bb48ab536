# NACLIP as its repository (sinahmr/NACLIP) evaluates COCO-Stuff-164k val2017 (171 classes).
_base_ = ['./coco_stuff164k.py']
test_cfg = dict(training_free=dict(method='naclip'))
protocol = 'NACLIP'
paper = 'NACLIP: sinahmr/NACLIP configs/cfg_coco_stuff164k.py; its README reports 25.69 mIoU'
