# OVSegmentor's published settings for Pascal Context val: 59 classes + background, GroupViT's names, 0.35.
_base_ = ['./pascal_context.py']
test_cfg = dict(bg_thresh=0.35)
protocol = 'OVSegmentor'
paper = 'OVSegmentor (CVPR 2023) zero-shot Pascal Context: 20.4 (ViT-B + BERT-base, 8 groups, CC4M); template simple'
