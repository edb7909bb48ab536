# PGSeg's published settings for COCO-Object val2017: bg_thresh 0.85, and PGSeg prompts 'aeroplane ' where
# GroupViT prompts 'airplane' (the only name that differs; the tokenizer drops the trailing space).
_base_ = ['./coco.py']
test_cfg = dict(bg_thresh=0.85)
prompt_names = dict(airplane='aeroplane ')
protocol = 'PGSeg'
paper = 'PGSeg (NeurIPS 2023) zero-shot COCO-Object: 28.7 (GCC + RedCaps), 22.9 (GCC); template simple'
