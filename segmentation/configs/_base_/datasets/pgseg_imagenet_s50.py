# ImageNet-S50 (LUSSeg release, validation: 752 images, background + 50 classes) under PGSeg's ImageNet-S protocol
# (pgseg_imagenet_s919.py): same threshold, resize, windows and prompts; the classes are the S50 subset of PGSeg's
# 919 names (by wnid), and the masks use S50's own ids 1..50.
_base_ = ['./pgseg_imagenet_s919.py']
data_root = 'local_data/ImageNet-S/ImageNetS50'
dataset = dict(type='ImageNetS50Dataset')
paper = ('PGSeg (NeurIPS 2023) ImageNet-S protocol (repository config imagenet_s.py, written for S919) applied to '
         'ImageNet-S50 val; no published number')
