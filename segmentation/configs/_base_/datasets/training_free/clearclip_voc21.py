# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates Pascal VOC 2012 val with background (21 classes).
_base_ = ['./voc21.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_voc21.py'
