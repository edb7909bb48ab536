# MaskCLIP as its repository (mc-lan/ClearCLIP (model_type MaskCLIP)) evaluates COCO-Stuff-164k val2017 (171 classes).
_base_ = ['./coco_stuff164k.py']
test_cfg = dict(training_free=dict(method='maskclip'))
protocol = 'MaskCLIP'
paper = 'MaskCLIP: mc-lan/ClearCLIP (model_type MaskCLIP) configs/cfg_coco_stuff164k.py'
