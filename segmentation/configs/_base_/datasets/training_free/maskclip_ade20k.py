# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates ADE20K val (150 classes).
_base_ = ['./ade20k.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_ade20k.py'
