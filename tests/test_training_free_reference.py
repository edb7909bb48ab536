"""Same weights => same outputs as the published SCLIP, NACLIP and ClearCLIP segmentors (MaskCLIP through ClearCLIP's),
full-size ViT-B/16 in float32 and float64; and every protocol entry against what the repositories' configs say.
tests/data/README.md says how training_free_reference.pt was made."""
import inspect
from pathlib import Path

import mmcv
import pytest
import torch

import segmentation  # noqa: F401  (makes mmcv.ops importable before mmseg)
from mmseg.models.data_preprocessor import SegDataPreProcessor
from datasets import tokenize
from models.clip import build_clip
from models.training_free import NACLIP, TRAINING_FREE_METHODS, gaussian_neighbourhood
from reference_weights import openai_like_state_dict
from segmentation.evaluation import training_free_predict, training_free_protocol
from segmentation.evaluation.training_free import TRAINING_FREE_BENCHMARKS, read_class_names
from utils.config import load_config

REFERENCE = torch.load(Path(__file__).parent / 'data' / 'training_free_reference.pt', weights_only=True)
DTYPES = ('float32', 'float64')
# max |ours - published| / max |published|; float64 keeps the last bits of the published float64 run
TOLERANCE = {'float32': 1e-5, 'float64': 1e-12}
REPOSITORY_OF = {'sclip': 'sclip', 'naclip': 'naclip', 'clearclip': 'clearclip', 'maskclip': 'clearclip'}


def rel_err(a, b):
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.fixture(scope='module')
def clips():
    """dtype name -> the full-size ViT-B/16 with the reference weights (built once, shared by the methods)."""
    clip = build_clip('ViT-B/16')
    clip.load_state_dict(openai_like_state_dict(clip.state_dict(), seed=REFERENCE['weight_seed']))
    clip.eval()
    return {'float32': clip, 'float64': None}


def clip_in(clips, dtype):
    if clips[dtype] is None:
        clips[dtype] = build_clip('ViT-B/16')
        clips[dtype].load_state_dict(clips['float32'].state_dict())
        clips[dtype].to(getattr(torch, dtype)).eval()
    return clips[dtype]


def normalised_input(case):
    """The published test pipeline: keep-ratio resize to short side S (mmcv, bilinear), CLIP's mean/std, BGR->RGB."""
    resized = mmcv.imrescale(case['image'].numpy(), (2048, case['protocol']['short_side']), interpolation='bilinear',
                             backend='cv2')
    pre = SegDataPreProcessor(mean=[122.771, 116.746, 104.094], std=[68.501, 66.632, 70.323], bgr_to_rgb=True)
    return pre({'inputs': [torch.from_numpy(resized).permute(2, 0, 1).contiguous()]}, False)['inputs']


@pytest.mark.parametrize('dtype', DTYPES)
def test_text_and_image_encoders(clips, dtype):
    clip = clip_in(clips, dtype)
    ref = REFERENCE['clip'][dtype]
    tokens = tokenize(REFERENCE['prompts'])
    assert torch.equal(tokens, REFERENCE['prompt_tokens'])
    img = normalised_input(REFERENCE['cases']['sclip']).to(getattr(torch, dtype))[:, :, :224, :224]
    with torch.no_grad():
        assert rel_err(clip.encode_text(tokens), ref['prompt_embeddings']) < TOLERANCE[dtype]
        assert rel_err(clip.encode_image(img), ref['image_embedding']) < TOLERANCE[dtype]


def test_gaussian_neighbourhood_equals_naclips():
    assert torch.equal(gaussian_neighbourhood((3, 4), 5.0), REFERENCE['omega']['3x4_std5'])
    assert torch.equal(gaussian_neighbourhood((2, 5), 2.0), REFERENCE['omega']['2x5_std2'])


@pytest.mark.parametrize('dtype', DTYPES)
@pytest.mark.parametrize('method', ['sclip', 'naclip', 'clearclip', 'maskclip'])
def test_outputs_equal_the_published_segmentor(clips, method, dtype, tmp_path):
    case, torch_dtype = REFERENCE['cases'][method], getattr(torch, dtype)
    ref, protocol = case[dtype], case['protocol']
    vocabulary = REFERENCE['vocabularies'][case['separator']]
    names_file = tmp_path / 'names.txt'
    names_file.write_text(vocabulary['text'])
    names, query_idx = read_class_names(str(names_file), case['separator'])
    text_embedding = vocabulary['text_embedding'][dtype]
    assert len(names) == text_embedding.shape[0] == ref['logits'].shape[0]

    img = normalised_input(case)
    assert tuple(img.shape) == tuple(case['input_shape'])
    assert img.double().sum().item() == pytest.approx(case['input_sum'], rel=1e-12)
    model = TRAINING_FREE_METHODS[method](clip_model=clip_in(clips, dtype))
    crops = []
    zero_shot_logits = model.zero_shot_logits

    def recording(crop, *args, **kwargs):
        out = zero_shot_logits(crop, *args, **kwargs)
        crops.append(out[0, :, 5::32, 5::32])
        return out
    model.zero_shot_logits = recording
    out = training_free_predict(model, img.to(torch_dtype), text_embedding, query_idx, tuple(protocol['image_hw']),
                                protocol['slide_crop'] or None, protocol['slide_stride'], protocol['logit_scale'],
                                protocol['prob_thd'], protocol['area_thd'], protocol['pamr_steps'],
                                protocol['pamr_stride'])
    assert len(crops) == len(ref['crop_logits'])
    assert rel_err(torch.stack(crops), ref['crop_logits']) < TOLERANCE[dtype]
    assert rel_err(out['logits'], ref['logits']) < TOLERANCE[dtype]
    assert rel_err(out['scores'], ref['scores']) < TOLERANCE[dtype]
    assert torch.equal(out['pred'], ref['pred'].long())
    assert len(ref['pred'].unique()) >= 2  # the case decides something


def merged_settings(method, benchmark):
    """The repository's segmentor defaults, overridden by its base config and its cfg_<benchmark>.py."""
    facts = REFERENCE['protocol'][REPOSITORY_OF[method]]
    return {**facts['defaults'], **facts['base_model'], **facts[benchmark]['model']}, facts[benchmark]


@pytest.mark.parametrize('method', ['sclip', 'naclip', 'clearclip', 'maskclip'])
def test_every_protocol_entry_is_the_repositorys(method):
    for benchmark in TRAINING_FREE_BENCHMARKS:
        ours = training_free_protocol(method, benchmark)
        settings, facts = merged_settings(method, benchmark)
        assert facts['resize_scale'][0] == 2048 and facts['keep_ratio']
        expected = dict(short_side=facts['resize_scale'][1], slide_crop=settings['slide_crop'] or None,
                        slide_stride=settings['slide_stride'], logit_scale=settings['logit_scale'],
                        prob_thd=settings['prob_thd'], area_thd=settings.get('area_thd'),
                        pamr_steps=settings.get('pamr_steps', 0), pamr_stride=settings.get('pamr_stride'),
                        names=facts['names'], query_idx=facts['query_idx'], templates=REFERENCE['templates'])
        assert ours == expected, (method, benchmark)
    settings, _ = merged_settings(method, 'voc21')
    if method == 'naclip':
        assert (settings['arch'], settings['attn_strategy']) == ('reduced', 'naclip')
        assert load_config('configs/training_free/naclip.yml').model.gaussian_std == settings['gaussian_std']
        assert inspect.signature(NACLIP).parameters['gaussian_std'].default == settings['gaussian_std']
    if method in ('clearclip', 'maskclip'):
        # the repository's base config ships model_type 'vanilla'; the paper's method is model_type 'ClearCLIP'
        assert settings['model_type'] == 'vanilla' and settings['ignore_residual'] is True


def test_published_class_name_facts():
    voc21 = training_free_protocol('sclip', 'voc21')
    assert len(voc21['names']) == 56 and max(voc21['query_idx']) == 20
    assert voc21['query_idx'].count(0) == 26 and 'pottedplant' in voc21['names']
    assert training_free_protocol('naclip', 'voc21')['names'] == voc21['names']
    assert len(training_free_protocol('clearclip', 'voc21')['names']) == 21
    with pytest.raises(ValueError, match='unknown benchmark'):
        training_free_protocol('sclip', 'cityscapes')
    with pytest.raises(ValueError, match='unknown training-free method'):
        training_free_protocol('tcl', 'voc21')
