# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates ADE20K val (150 classes).
_base_ = ['./ade20k.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_ade20k.py'
