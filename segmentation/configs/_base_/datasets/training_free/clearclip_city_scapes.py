# ClearCLIP as its repository (mc-lan/ClearCLIP) evaluates Cityscapes val (19 classes).
_base_ = ['./city_scapes.py']
test_cfg = dict(training_free=dict(method='clearclip'))
protocol = 'ClearCLIP'
paper = 'ClearCLIP: mc-lan/ClearCLIP configs/cfg_city_scapes.py'
