# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates Pascal VOC 2012 val without background
# (20 classes).
_base_ = ['./voc20.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_voc20.py'
