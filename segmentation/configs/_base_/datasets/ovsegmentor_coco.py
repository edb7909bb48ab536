# OVSegmentor's published settings for COCO-Object val2017: 80 classes + background, COCO's names, 0.9.
_base_ = ['./coco.py']
test_cfg = dict(bg_thresh=0.9)
protocol = 'OVSegmentor'
paper = 'OVSegmentor (CVPR 2023) zero-shot COCO-Object: 25.1 (ViT-B + BERT-base, 8 groups, CC4M); template simple'
