# Shared test protocol of GroupViT / PGSeg (and TCL): keep-ratio resize to (2048, 448), ImageNet normalisation
# (RGB), no flip, 448x448 sliding window with stride 224, predictions resized back to the original image.
# Every benchmark file in datasets/ starts from this one and sets its data, classes and thresholds.
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 448), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
data_preprocessor = dict(
    type='SegDataPreProcessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_val=0,
    seg_pad_val=255)
test_cfg = dict(
    mode='slide',  # 'slide' or 'whole'
    crop_size=(448, 448),
    stride=(224, 224),
    crop_batch=8,  # crops encoded together; changes speed and memory, not the numbers
    compact_logits=False,  # True: keep slide logits as group-label maps + one row per group combination
    # instead of [classes, H, W] (same labels; needs pamr=False); for hundreds of classes
    precision='float32',  # image encoder arithmetic: 'float32' (published) or 'bfloat16' / 'float16' autocast
    template=None,  # prompt templates; None: the model config's evaluate.seg.template
    top_k=5,  # classes kept per crop by the pooled image embedding (GroupViT)
    bg_rule='groupvit',  # 'groupvit': max group-class affinity below min(bg_thresh, max affinity); 'tcl': constant
    bg_thresh=0.95,
    pamr=False,  # refine the class maps with PAMR before the background decision (TCL)
    pamr_iters=10,
    pamr_dilations=(1, 2, 4, 8, 12, 24),
    pamr_downsample=4,  # PAMR runs at 1/4 of the crop resolution, where TCL's masks live
)
prompt_names = dict()  # class name -> text used in the prompts, where a paper prompts differently
num_workers = 2
protocol = 'custom'
paper = ''
