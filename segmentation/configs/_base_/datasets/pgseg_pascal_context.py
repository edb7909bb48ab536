# PGSeg's published settings for Pascal Context val: GroupViT's protocol with bg_thresh 0.36.
_base_ = ['./pascal_context.py']
test_cfg = dict(bg_thresh=0.36)
protocol = 'PGSeg'
paper = 'PGSeg (NeurIPS 2023) zero-shot Pascal Context: 23.8 (GCC + RedCaps), 20.6 (GCC); template simple'
