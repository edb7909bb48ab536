# Training-free CLIP protocol on Pascal VOC 2012 val without background (20 classes): the data of ../tcl_voc20.py;
# CLIP's normalisation; the method's resize, windows, thresholds and query names come from
# segmentation/configs/training_free_protocols.yml for (test_cfg.training_free.method, 'voc20') (the <method>_voc20.py
# presets set the method).
_base_ = ['../tcl_voc20.py']
data_preprocessor = dict(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323])
# a protocol key set here or in evaluate.seg.opts (test_cfg.training_free.prob_thd=0.2) replaces the table's
test_cfg = dict(_delete_=True, template='full', training_free=dict(
    method=None, benchmark='voc20', short_side=None, slide_crop=None, slide_stride=None, logit_scale=None,
    prob_thd=None, area_thd=None, pamr_steps=None, pamr_stride=None))
prompt_names = dict(_delete_=True)
protocol = 'training-free CLIP'
