# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates Pascal Context val with background (60 classes).
_base_ = ['./context60.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_context60.py'
