# SegCLIP protocol, COCO-Object val2017 (5,000 images): 80 COCO thing classes + background, COCO's own names.
# Masks come from convert_dataset/convert_coco_object.py (`*_instanceTrainIds.png`).
_base_ = ['../segclip.py']
data_root = 'local_data/coco'
dataset = dict(
    type='COCOObjectDataset', data_prefix=dict(img_path='images/val2017', seg_map_path='annotations/val2017'))
test_cfg = dict(bg_thresh=0.65)
paper = 'SegCLIP (ICML 2023) zero-shot COCO-Object 26.5'
