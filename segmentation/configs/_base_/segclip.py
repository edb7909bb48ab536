# SegCLIP's protocol (its seg_segmentation/configs, mmseg 0.18): keep-ratio resize to (2048, 224), CLIP's mean/std
# (RGB), no flip, 224x224 sliding window with stride 224 (overlaps averaged), logits resized back to the image;
# template 'a photo of a {}.' only; the top-5 classes of each window; SegCLIP's background rule (the GroupViT rule:
# background where a pixel's best score is below min(bg_thresh, the window's largest center-class score)).
_base_ = ['./zero_shot.py']
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 224), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
data_preprocessor = dict(mean=[122.7709383, 116.7460125, 104.09373615], std=[68.5005327, 66.6321579, 70.32316305])
test_cfg = dict(crop_size=(224, 224), stride=(224, 224), template='simple', top_k=5, bg_rule='groupvit')
protocol = 'SegCLIP'
