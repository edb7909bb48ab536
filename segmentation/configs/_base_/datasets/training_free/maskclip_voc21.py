# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates Pascal VOC 2012 val with background
# (21 classes).
_base_ = ['./voc21.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_voc21.py'
