# Toy world (tools/make_toy_data.py): 64 px images, background + the classes of <toy>/classes.json.
# The images are not resized (short side 64 stays 64) and one 64x64 window covers each image, so the slide path
# equals whole-image inference. bg_thresh is a starting point: choose it on the 'tune' split
# (evaluate.seg.opts "['dataset.ann_file=ImageSets/Segmentation/tune.txt']").
_base_ = ['../zero_shot.py']
data_root = 'local_data/toy/voc'
dataset = dict(
    type='ToySegDataset',
    classes_file='../classes.json',
    data_prefix=dict(img_path='JPEGImages', seg_map_path='SegmentationClass'),
    ann_file='ImageSets/Segmentation/val.txt')
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(2048, 64), keep_ratio=True),
    dict(type='LoadAnnotations'),
    dict(type='PackSegInputs'),
]
test_cfg = dict(crop_size=(64, 64), stride=(32, 32), crop_batch=16, bg_thresh=0.5)
num_workers = 0
protocol = 'GroupViT (toy scale)'
paper = 'none: the toy world of this repository'
