# ImageNet-S300 (LUSSeg release, validation: 4,097 images, background + 300 classes) under PGSeg's ImageNet-S protocol
# (pgseg_imagenet_s919.py): same threshold, resize, windows and prompts; the classes are the S300 subset of PGSeg's
# 919 names (by wnid), and the masks use S300's own ids 1..300.
_base_ = ['./pgseg_imagenet_s919.py']
data_root = 'local_data/ImageNet-S/ImageNetS300'
dataset = dict(type='ImageNetS300Dataset')
paper = ('PGSeg (NeurIPS 2023) ImageNet-S protocol (repository config imagenet_s.py, written for S919) applied to '
         'ImageNet-S300 val; no published number')
