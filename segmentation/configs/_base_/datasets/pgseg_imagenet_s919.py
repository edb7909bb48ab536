# PGSeg's ImageNet-S protocol (Ferenas/PGSeg segmentation/configs/_base_/datasets/imagenet_s.py): the LUSSeg
# release's validation set of ImageNet-S919 (12,419 images), background ("other", id 0) + 919 classes prompted with
# PGSeg's names, GroupViT background rule with bg_thresh 0.11, keep-ratio resize to (2048, 448), 448x448 windows
# with stride 224, labels at the original size. Label PNGs are RGB (id = R + 256 * G, 1000 ignored).
# compact_logits keeps the 920-class slide logits out of memory (same labels as the dense path).
_base_ = ['../zero_shot.py']
data_root = 'local_data/ImageNet-S/ImageNetS919'
dataset = dict(
    type='ImageNetS919Dataset',
    data_prefix=dict(img_path='validation', seg_map_path='validation-segmentation'),
    ann_file='')  # '': every *.JPEG under validation/; or a list (LUSSeg's data/names/ImageNetS_im919_validation.txt)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadLabelIds', encoding='rgb'),
    dict(type='PackSegInputs'),
]
test_cfg = dict(bg_thresh=0.11, compact_logits=True)
protocol = 'PGSeg'
paper = ('PGSeg (NeurIPS 2023) repository config imagenet_s.py: ImageNet-S919 val, bg_thresh 0.11, template simple '
         '(the repository publishes no ImageNet-S number)')
