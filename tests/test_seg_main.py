"""main_seg.py end to end on the toy world: report, overlays, errors, and 2-process gloo == 1 process."""
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

import main_seg
from conftest import tiny_config_path
import segmentation  # noqa: F401
from models import build_model
from segmentation.evaluation import evaluate_seg
from utils.checkpoint import save_checkpoint
from utils.config import load_config

ROOT = Path(__file__).resolve().parents[1]

MODEL_YML = """\
_base_: {tiny}
evaluate:
  seg:
    cfg: segmentation/configs/_base_/datasets/toy.py
    opts: ['data_root={data_root}', 'test_cfg.bg_thresh=0.3']
model:
  img_encoder: {{img_size: 64}}
"""


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    """A toy world with 5 segmentation images, a model config and a random checkpoint."""
    tmp = tmp_path_factory.mktemp('seg_main')
    subprocess.run([sys.executable, str(ROOT / 'tools/make_toy_data.py'), '--out', str(tmp / 'toy'),
                    '--train-samples', '2', '--samples-per-shard', '2', '--cls-samples', '2', '--seg-val', '5',
                    '--seg-tune', '1'], check=True, capture_output=True)
    cfg_path = tmp / 'tiny.yml'
    cfg_path.write_text(MODEL_YML.format(tiny=tiny_config_path('groupvit'), data_root=tmp / 'toy/voc'))
    torch.manual_seed(0)
    model = build_model(load_config(str(cfg_path)).model)
    with torch.no_grad():
        for weight in model.img_encoder.parameters():
            if weight.dim() >= 2:
                weight.normal_(0, 2 / weight[0].numel()**0.5)  # several groups own pixels
    ckpt = save_checkpoint(str(tmp / 'ckpt.pth'), model.state_dict())
    return dict(tmp=tmp, cfg=str(cfg_path), ckpt=ckpt, model=model)


def test_single_process_report(run, capsys):
    out = run['tmp'] / 'out1'
    main_seg.main([run['cfg'], '--resume', run['ckpt'], '--output', str(out), '--vis', '2'])
    printed = capsys.readouterr().out
    assert 'mIoU' in printed and 'protocol=GroupViT (toy scale)' in printed and 'circle' in printed
    report = json.loads((out / 'seg_toy.json').read_text())
    assert report['checkpoint_sha256'] == hashlib.sha256(Path(run['ckpt']).read_bytes()).hexdigest()[:12]
    assert report['protocol']['bg_thresh'] == 0.3 and report['protocol']['num_images'] == 5
    assert 'precision' not in report['protocol']  # float32, the published arithmetic
    assert report['world_size'] == 1 and len(report['per_class']) == 9
    assert sorted(os.listdir(out / 'vis')) == ['00000_val_000000.png', '00001_val_000001.png']

    # the same numbers through the library entry point the training loop calls
    cfg = load_config(run['cfg'])
    model = run['model'].train()
    direct = evaluate_seg(model, cfg, progress=False)
    assert model.training  # mode restored
    assert direct['mIoU'] == pytest.approx(report['mIoU'], abs=1e-9)
    assert 0 < report['per_class']['background']['IoU'] < 100


def test_report_next_to_checkpoint_by_default(run):
    main_seg.main([run['cfg'], '--resume', run['ckpt'], '--opts', 'evaluate.seg.opts',
                   f"['data_root={run['tmp'] / 'toy/voc'}','dataset.ann_file=ImageSets/Segmentation/tune.txt',"
                   "'test_cfg.precision=bfloat16']"])
    report = json.loads((run['tmp'] / 'ckpt_seg_toy.json').read_text())
    assert report['protocol']['num_images'] == 1 and report['protocol']['bg_thresh'] == 0.5
    assert report['protocol']['precision'] == 'bfloat16'


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def test_two_process_gloo_equals_one_process(run):
    one = run['tmp'] / 'out1' / 'seg_toy.json'
    if not one.exists():
        main_seg.main([run['cfg'], '--resume', run['ckpt'], '--output', str(one.parent)])
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(ROOT))
    out = run['tmp'] / 'out2'
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', '2', '--master_addr', '127.0.0.1',
         '--master_port', str(free_port()), str(ROOT / 'main_seg.py'), '--cfg', run['cfg'], '--resume', run['ckpt'],
         '--output', str(out)], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single, double = json.loads(one.read_text()), json.loads((out / 'seg_toy.json').read_text())
    assert double['world_size'] == 2
    assert double['mIoU'] == pytest.approx(single['mIoU'], abs=1e-9)
    assert double['per_class'] == single['per_class']
    assert double['aAcc'] == pytest.approx(single['aAcc'], abs=1e-9)


def test_data_is_checked_before_the_model(run, tmp_path, capsys):
    not_a_checkpoint = tmp_path / 'weights.pth'
    not_a_checkpoint.write_text('garbage')
    with pytest.raises(SystemExit) as info:
        main_seg.main([run['cfg'], '--resume', str(not_a_checkpoint), '--opts', 'evaluate.seg.opts',
                       f"['data_root={tmp_path / 'missing'}']"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: data root not found: '{tmp_path / 'missing'}' " \
                  "(set it with --opts evaluate.seg.opts \"['data_root=/path']\")"


def test_missing_checkpoint_and_unreadable_checkpoint(run, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main_seg.main([run['cfg'], '--resume', str(tmp_path / 'none.pth')])
    assert capsys.readouterr().err.strip() == f'error: checkpoint not found: {tmp_path / "none.pth"}'
    bad = tmp_path / 'weights.pth'
    bad.write_text('garbage')
    with pytest.raises(SystemExit):
        main_seg.main([run['cfg'], '--resume', str(bad)])
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and str(bad) in err and '\n' not in err


def test_published_checkpoint_must_fit_strictly(run, tmp_path, capsys):
    state = dict(run['model'].state_dict())
    state.pop('logit_scale')
    partial = save_checkpoint(str(tmp_path / 'partial.pth'), state)
    with pytest.raises(SystemExit):
        main_seg.main([run['cfg'], '--resume', partial])
    assert 'missing: logit_scale' in capsys.readouterr().err


def test_config_errors_are_one_line(run, capsys):
    with pytest.raises(SystemExit):
        main_seg.main([run['cfg'], '--resume', run['ckpt'], '--opts', 'evaluate.seg.bg_thresh=0.3'])
    err = capsys.readouterr().err.strip()
    assert err.startswith('error: ') and 'evaluate.seg.bg_thresh' in err and '\n' not in err
    assert OmegaConf.select(load_config(run['cfg']), 'evaluate.seg.template') == 'simple'
