# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates Pascal Context val with background (60
# classes).
_base_ = ['./context60.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_context60.py'
