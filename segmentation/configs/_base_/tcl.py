# TCL's unified protocol (CVPR 2023, Table 2): mmseg's class names, TCL's "custom" prompts (CLIP's 7 ImageNet
# templates + 'a photo of many {}.' + 'a photo of {}s.'), PAMR refinement (10 iterations, dilations 1-24) and
# one global background threshold (0.4 with PAMR). For TCL's Table 3 (no PAMR) override
# test_cfg.pamr=False test_cfg.bg_thresh=0.5. kp_w is the TCL model's keep-prompt mix (models/tcl); bg_rule and
# pamr_downsample are what other methods (GroupViT) use under this protocol; each method takes the entries it names.
_base_ = ['./zero_shot.py']
test_cfg = dict(template='custom', bg_rule='tcl', bg_thresh=0.4, pamr=True, kp_w=0.3)
protocol = 'TCL'
