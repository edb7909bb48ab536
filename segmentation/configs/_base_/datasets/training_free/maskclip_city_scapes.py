# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates Cityscapes val (19 classes).
_base_ = ['./city_scapes.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_city_scapes.py'
