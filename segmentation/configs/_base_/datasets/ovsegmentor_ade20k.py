# OVSegmentor's published settings for ADE20K val: the 150 classes without background (label 0 "other" is ignored),
# mmseg's names (one is 'bed ' with its trailing space, prompted as it is), GroupViT's per-crop rule, template simple.
_base_ = ['../zero_shot.py']
data_root = 'local_data/ade/ADEChallengeData2016'
dataset = dict(
    type='ADE20KDataset', data_prefix=dict(img_path='images/validation', seg_map_path='annotations/validation'))
protocol = 'OVSegmentor'
paper = 'OVSegmentor (CVPR 2023) zero-shot ADE20K: 5.6 (ViT-B + BERT-base, 8 groups, CC4M); template simple'
