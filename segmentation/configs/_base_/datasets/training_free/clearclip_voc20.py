# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates Pascal VOC 2012 val without background (20 classes).
_base_ = ['./voc20.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_voc20.py'
