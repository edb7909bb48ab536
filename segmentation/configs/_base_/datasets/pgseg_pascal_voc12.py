# PGSeg's published settings for Pascal VOC 2012 val: same as GroupViT (bg_thresh 0.95).
_base_ = ['./pascal_voc12.py']
test_cfg = dict(bg_thresh=0.95)
protocol = 'PGSeg'
paper = 'PGSeg (NeurIPS 2023) zero-shot Pascal VOC: 53.2 (GCC + RedCaps), 49.0 (GCC); template simple'
