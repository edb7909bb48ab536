# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates Pascal Context val without background
# (59 classes).
_base_ = ['./context59.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_context59.py'
