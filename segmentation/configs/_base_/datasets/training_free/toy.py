# Training-free CLIP methods on the toy world (tools/make_toy_data.py): the data of ../toy.py, one query name per
# class (background included), CLIP's normalisation and templates, whole 64 px images (one window), no thresholds.
_base_ = ['../toy.py']
data_preprocessor = dict(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323])
test_cfg = dict(_delete_=True, template='full', training_free=dict(
    method=None, benchmark=None, short_side=64, slide_crop=0, slide_stride=None, logit_scale=40, prob_thd=0.0,
    area_thd=None, pamr_steps=0, pamr_stride=None))
protocol = 'training-free CLIP (toy scale)'
