# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates COCO-Object val2017 (80 classes +
# background).
_base_ = ['./coco_object.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_coco_object.py'
