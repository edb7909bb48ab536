# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates COCO-Object val2017 (80 classes + background).
_base_ = ['./coco_object.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_coco_object.py'
