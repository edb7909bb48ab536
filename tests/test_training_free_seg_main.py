"""main_seg.py with the training-free methods: each method's published-protocol preset on a VOC-layout fixture, the
weights given as an OpenAI-style TorchScript file (--resume), the segmentor against training_free_predict, and the
toy-world preset."""
import json
from pathlib import Path

import pytest
import torch
from mmengine.dataset import pseudo_collate

import main_seg
import segmentation  # noqa: F401
from conftest import build_tiny, tiny_config_path
from datasets.templates import get_templates
from reference_weights import openai_like_state_dict
from segmentation.evaluation import (build_benchmark_dataset, build_segmentor, load_benchmark, training_free_predict,
                                     training_free_protocol)
from segmentation.evaluation.training_free import TrainingFreeSegmentor
from test_clip_backbone import write_traced_clip
from test_seg_datasets import make_toy, make_voc
from utils.checkpoint import load_weights
from utils.zero_shot import class_embeddings

PRESETS = Path('segmentation/configs/_base_/datasets/training_free')
METHODS = ('maskclip', 'sclip', 'clearclip', 'naclip')


@pytest.fixture(scope='module')
def fixture(tmp_path_factory):
    """A VOC-layout dataset (2 images, 20x30 px) and the tiny methods' CLIP as an OpenAI-style TorchScript file."""
    tmp = tmp_path_factory.mktemp('training_free_seg')
    clip = build_tiny('sclip').clip
    clip.load_state_dict(openai_like_state_dict(clip.state_dict(), seed=3))
    write_traced_clip(clip.eval(), tmp / 'tiny_openai.pt')
    return dict(tmp=tmp, voc=make_voc(tmp / 'voc'), weights=str(tmp / 'tiny_openai.pt'))


@pytest.mark.parametrize('method', METHODS)
def test_main_seg_runs_the_published_protocol(fixture, method, capsys):
    out = fixture['tmp'] / f'out_{method}'
    main_seg.main([tiny_config_path(method), '--resume', fixture['weights'], '--output', str(out), '--opts',
                   'evaluate.seg.cfg', str(PRESETS / f'{method}_voc21.py'), 'evaluate.seg.opts',
                   f"[data_root={fixture['voc']}]"])
    printed = capsys.readouterr().out
    assert 'mIoU' in printed and 'training_free=' in printed and f"'method': '{method}'" in printed
    report = json.loads((out / f'seg_{method}_voc21.json').read_text())
    protocol = training_free_protocol(method, 'voc21')
    recorded = report['protocol']['training_free']
    assert {k: recorded[k] for k in ('short_side', 'slide_stride', 'logit_scale', 'prob_thd', 'area_thd',
                                     'pamr_steps')} == {k: protocol[k] for k in ('short_side', 'slide_stride',
                                                                                'logit_scale', 'prob_thd',
                                                                                'area_thd', 'pamr_steps')}
    assert recorded['slide_crop'] == protocol['slide_crop'] and recorded['method'] == method
    assert report['protocol']['resize'] == [2048, protocol['short_side']] and len(report['per_class']) == 21
    assert 0 <= report['mIoU'] <= 100 and report['protocol']['num_images'] == 2


def test_segmentor_predicts_what_training_free_predict_does(fixture):
    bench = load_benchmark(str(PRESETS / 'sclip_voc21.py'), [f"data_root={fixture['voc']}"])
    dataset = build_benchmark_dataset(bench)
    model = build_tiny('sclip').eval()
    load_weights(model, fixture['weights'])  # OpenAI names -> clip.*
    segmentor = build_segmentor(model, dataset, bench).eval()
    assert isinstance(segmentor, TrainingFreeSegmentor)
    data = pseudo_collate([dataset[0]])
    with torch.no_grad():
        sample = segmentor.test_step(data)[0]
        p = training_free_protocol('sclip', 'voc21')
        first_names = class_embeddings(model, p['names'][:3], get_templates('full'))
        img = segmentor.data_preprocessor(data, False)['inputs']
        assert img.shape[-2:] == (336, 504)  # 20x30 image, short side 336
        expected = training_free_predict(model, img, segmentor.text_embedding, p['query_idx'], (20, 30),
                                         p['slide_crop'], p['slide_stride'], p['logit_scale'], p['prob_thd'],
                                         p['area_thd'], p['pamr_steps'], p['pamr_stride'])
    assert segmentor.text_embedding.shape[0] == 56
    assert torch.allclose(segmentor.text_embedding[:3], first_names, atol=1e-6)
    assert segmentor.query_idx == p['query_idx']
    assert torch.equal(sample.pred_sem_seg.data[0], expected['pred'])
    assert torch.equal(sample.seg_logits.data, expected['scores'])


def test_preset_of_another_method_is_refused(fixture, capsys):
    with pytest.raises(SystemExit) as stop:
        main_seg.main([tiny_config_path('sclip'), '--resume', fixture['weights'], '--output',
                       str(fixture['tmp'] / 'wrong'), '--opts', 'evaluate.seg.cfg', str(PRESETS / 'naclip_voc21.py'),
                       'evaluate.seg.opts', f"[data_root={fixture['voc']}]"])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith('error: ') and "naclip's protocol, but the model is sclip" in error


def test_toy_world_preset(fixture, capsys):
    root = make_toy(fixture['tmp'] / 'toy')
    out = fixture['tmp'] / 'out_toy'
    main_seg.main([tiny_config_path('naclip'), '--resume', fixture['weights'], '--output', str(out), '--opts',
                   'evaluate.seg.cfg', str(PRESETS / 'toy.py'), 'evaluate.seg.opts', f'[data_root={root}]'])
    report = json.loads((out / 'seg_toy.json').read_text())
    assert report['protocol']['num_images'] == 3 and len(report['per_class']) == 9
    assert report['protocol']['training_free']['short_side'] == 64 and report['protocol']['mode'] == 'whole'
    assert 'circle' in capsys.readouterr().out


def test_every_preset_resolves_to_its_repositorys_protocol():
    from segmentation.datasets import SegDataError
    from segmentation.evaluation.training_free import TRAINING_FREE_BENCHMARKS
    presets = {p.stem for p in PRESETS.glob('*.py')}
    assert presets == {f'{m}_{b}' for m in METHODS for b in TRAINING_FREE_BENCHMARKS} | set(
        TRAINING_FREE_BENCHMARKS) | {'toy'}
    for method in METHODS:
        for benchmark in TRAINING_FREE_BENCHMARKS:
            bench = load_benchmark(str(PRESETS / f'{method}_{benchmark}.py'), ['test_cfg.training_free.prob_thd=0.3'])
            protocol = training_free_protocol(method, benchmark)
            settings = bench.test_cfg.training_free
            assert settings['prob_thd'] == 0.3  # an override wins over the table
            assert all(settings[k] == protocol[k] for k in ('short_side', 'slide_crop', 'slide_stride', 'logit_scale',
                                                            'area_thd', 'pamr_steps', 'pamr_stride'))
            resize = [t for t in bench.test_pipeline if t['type'] == 'Resize'][0]
            assert resize['scale'] == (2048, protocol['short_side']) and resize['keep_ratio']
            assert bench.data_preprocessor.mean == [122.771, 116.746, 104.094] and bench.test_cfg.template == 'full'
    with pytest.raises(SegDataError, match='no method'):
        load_benchmark(str(PRESETS / 'voc21.py'))
