"""Benchmark: the quick run end to end (tiny models) and the measuring helpers it relies on."""
import json
import math

import pytest
import torch

from benchmarks.run import QUICK_OPTS, main
from benchmarks.seg_bench import protocol_size
from benchmarks.timing import interleaved, peak_memory_mib
from benchmarks.train_bench import CONFIGS, PEER_EQUIVALENT
from benchmarks.train_step import build_ours, load_model_cfg, make_text, trim_context


@pytest.fixture(scope='module')
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp('bench') / 'results.json'
    main(['--out', str(out), '--quick', '--threads', '1', '--clock', 'process'])
    return json.loads(out.read_text())


def test_quick_run_writes_the_headline_keys(quick_results):
    for key in ('train_step_ratio_vs_hf', 'train_step_ratio_vs_hf_same_levers', 'seg_speedup_vs_published_protocol',
                'seg_logits_max_abs_diff_vs_published_protocol', 'data_samples_per_s_per_worker_groupvit',
                'groupvit_train_images_per_s_fast', 'pgseg_train_images_per_s_fast',
                'seg_resize_speedup_vs_published_protocol', 'seg_resize_dense_speedup_vs_published_protocol'):
        assert math.isfinite(quick_results[key]) and quick_results[key] >= 0, key
    assert quick_results['machine']['torch'] == torch.__version__
    assert quick_results['settings']['quick'] is True


def test_peer_computes_our_loss_and_segmentation_matches_the_published_protocol(quick_results):
    check = quick_results['sections']['train_vs_peer']['loss_check']
    assert check['loss_abs_diff'] < 1e-4 * max(1., abs(check['loss_ours']))
    assert quick_results['seg_logits_max_abs_diff_vs_published_protocol'] < 1e-5
    assert quick_results['seg_label_mismatch_vs_published_protocol'] == 0


def test_trimmed_context_gives_the_same_text_embedding():
    model = build_ours(load_model_cfg(CONFIGS['groupvit'], [*QUICK_OPTS, *PEER_EQUIVALENT])).eval()
    text = make_text(6, 0)
    short = trim_context(text)
    assert short.shape[-1] < text.shape[-1]
    assert (short.argmax(-1) == text.argmax(-1)).all()
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(short), model.encode_text(text), rtol=1e-5, atol=1e-5)


def test_interleaved_runs_variants_in_turn_and_takes_medians():
    calls = []
    result = interleaved({'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}, 'cpu', repeats=3,
                         warmup=1)
    assert calls == ['a', 'b'] * 4
    assert set(result) == {'a', 'b'} and len(result['a']['times_s']) == 3


def test_peak_memory_counts_what_a_call_allocates():
    def allocate():
        a = torch.ones(2 ** 20)  # 4 MiB
        b = torch.ones(2 ** 19)  # 2 MiB, both alive
        return float(a.sum() + b.sum())

    assert 6. <= peak_memory_mib(allocate, 'cpu') < 6.5


def test_protocol_resize_matches_mmseg_keep_ratio():
    assert protocol_size(375, 500, 448) == (448, 597)
    assert protocol_size(2000, 3000, 448) == (448, 672)


def test_bad_arguments_stop_with_one_line(tmp_path):
    with pytest.raises(SystemExit, match='--sections: unknown'):
        main(['--out', str(tmp_path / 'r.json'), '--sections', 'train,speed'])


def test_seg_memory_reports_a_919_class_evaluation(tmp_path, capsys):
    """The memory benchmark's path end to end, tiny architecture and a small picture (the 3000x4000 measurement
    runs in its own process: python benchmarks/seg_memory.py); a budget it exceeds is exit status 1."""
    from benchmarks import seg_memory
    out = tmp_path / 'memory.json'
    with pytest.raises(SystemExit) as info:
        seg_memory.main(['--quick', '--size', '300', '500', '--device', 'cpu', '--out', str(out),
                         '--max-rss-mib', '1'])
    assert info.value.code == 1 and 'exceeds --max-rss-mib 1' in capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report['num_classes'] == 920 and report['original_hw'] == [300, 500] and report['logits'] == 'compact'
    assert report['peak_rss_mib'] >= report['rss_after_model_mib'] > 0 and 0 <= report['mIoU'] <= 100


def test_training_free_bench_skips_without_the_official_code(tmp_path, capsys):
    """A clone without the official repositories: one line per method saying why, no table, no worker started."""
    from benchmarks import training_free_bench
    (tmp_path / 'SCLIP').mkdir()  # present, but not run: only naclip is asked for
    training_free_bench.main(['--official-root', str(tmp_path), '--methods', 'naclip', '--out',
                              str(tmp_path / 'r.json')])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == (f"skip naclip: no NACLIP clone at {tmp_path / 'NACLIP'} "
                        '(git clone https://github.com/sinahmr/NACLIP)')
    assert not any(line.startswith('|') for line in lines)
    training_free_bench.main(['--official-root', '', '--methods', 'sclip'])
    assert capsys.readouterr().out.startswith('skip sclip: no official code: pass --official-root DIR')
    with pytest.raises(SystemExit, match='unknown'):
        training_free_bench.main(['--methods', 'segclip'])
