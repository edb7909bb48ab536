# SCLIP as its repository (wangf3014/SCLIP) evaluates COCO-Stuff-164k val2017 (171 classes).
_base_ = ['./coco_stuff164k.py']
test_cfg = dict(training_free=dict(method='sclip'))
protocol = 'SCLIP'
paper = 'SCLIP: wangf3014/SCLIP configs/cfg_coco_stuff164k.py; its README reports 22.77 mIoU'
