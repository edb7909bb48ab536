# PGSeg's LVIS protocol (Ferenas/PGSeg segmentation/configs/_base_/datasets/Lvis.py): LVIS val listed in
# split/val_lvis.txt, background + the 1203 LVIS categories prompted with PGSeg's names, GroupViT background rule
# with bg_thresh 0.35, keep-ratio resize to (2048, 448), 448x448 windows with stride 224. Masks are single-channel
# 8/16-bit PNGs (0 background, k = k-th category, 65535 ignored; PGSeg does not publish how it made its maps:
# convert_dataset/convert_lvis.py writes them from LVIS's json).
_base_ = ['../zero_shot.py']
data_root = 'local_data/lvis'
dataset = dict(
    type='LVISDataset',
    data_prefix=dict(img_path='images', seg_map_path='annotations'),
    ann_file='split/val_lvis.txt')
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadLabelIds', encoding='gray'),
    dict(type='PackSegInputs'),
]
test_cfg = dict(bg_thresh=0.35, compact_logits=True)
protocol = 'PGSeg'
paper = ('PGSeg (NeurIPS 2023) repository config Lvis.py: LVIS val, bg_thresh 0.35, template simple '
         '(the repository publishes no LVIS number)')
