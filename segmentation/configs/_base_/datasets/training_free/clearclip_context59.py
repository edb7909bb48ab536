# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates Pascal Context val without background (59 classes).
_base_ = ['./context59.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_context59.py'
