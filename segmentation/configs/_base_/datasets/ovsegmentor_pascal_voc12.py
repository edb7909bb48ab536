# OVSegmentor's published settings for Pascal VOC 2012 val: GroupViT's names (table, plant, monitor) and rule, 0.95.
_base_ = ['./pascal_voc12.py']
test_cfg = dict(bg_thresh=0.95)
protocol = 'OVSegmentor'
paper = 'OVSegmentor (CVPR 2023) zero-shot Pascal VOC: 53.8 (ViT-B + BERT-base, 8 groups, CC4M); template simple'
