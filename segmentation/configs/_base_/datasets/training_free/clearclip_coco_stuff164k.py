# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates COCO-Stuff-164k val2017 (171 classes).
_base_ = ['./coco_stuff164k.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_coco_stuff164k.py'
