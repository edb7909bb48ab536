"""main_pg_seg.py end to end on a small toy world: 1 process with a corrupt shard, 2 processes (torchrun, gloo)
initialised from a weights-only file, SIGKILL and resume, --eval of the best checkpoint, and template sets."""
import glob
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time

import pytest

from tools.make_toy_data import make_toy_world
from utils.checkpoint import is_complete, load_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = 'configs/toy/groupvit_tiny.yml'
TINY = ['model.img_encoder.embed_dim=32', 'model.img_encoder.num_heads=[2,2,2]', 'model.img_encoder.depths=[1,1,1]',
        'model.img_encoder.num_group_tokens=[8,4,0]', 'model.img_encoder.num_output_groups=[8,4]',
        'model.text_encoder.width=32', 'model.text_encoder.layers=1', 'model.output_dim=32',
        'data.dataset.meta.toy_train.length=128', 'data.dataset.meta.toy_val.length=48',
        'print_freq=4']


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def command(world_root, output, *extra, epochs=2, nproc=1, cfg=CFG):
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ['-m', 'torch.distributed.run', '--nproc_per_node', str(nproc), '--master_port', str(free_port())]
    return [*launcher, 'main_pg_seg.py', cfg, '--output', str(output), '--batch-size', '16', *extra,
            '--opts', f'data.root={world_root}', f'train.epochs={epochs}', *TINY]


def run(cmd, timeout=400):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def run_dir(output):
    (path,) = glob.glob(os.path.join(str(output), '*', 'default'))
    return path


def log_text(output):
    with open(os.path.join(run_dir(output), 'log.txt')) as f:
        return f.read()


def add_corrupt_shard(shard_dir):
    """A copy of the first shard with an undecodable image and a caption-less sample, cut off inside its last
    member."""
    good = sorted(glob.glob(os.path.join(shard_dir, '*.tar')))[0]
    bad = os.path.join(shard_dir, 'toy-train-corrupt.tar')
    with tarfile.open(good) as src:
        members = [(m.name, src.extractfile(m).read()) for m in src.getmembers() if m.isfile()]
    keys = sorted({name.split('.')[0] for name, _ in members})
    with tarfile.open(bad, 'w') as dst:
        for name, data in members:
            if name == f'{keys[0]}.jpg':
                data = b'\xff\xd8 this is not a jpeg'
            if name == f'{keys[1]}.txt':
                continue
            info = tarfile.TarInfo(name)
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    with tarfile.open(bad) as tar:
        cut = tar.getmembers()[-1].offset_data + 10
    with open(bad, 'r+b') as f:
        f.truncate(cut)


@pytest.fixture(scope='module')
def worlds(tmp_path_factory):
    root = tmp_path_factory.mktemp('toy')
    clean = str(root / 'clean')
    make_toy_world(clean, train_samples=192, samples_per_shard=64, cls_samples=48, seg_val=2, seg_tune=1)
    corrupt = str(root / 'corrupt')
    shutil.copytree(clean, corrupt)
    add_corrupt_shard(os.path.join(corrupt, 'shards'))
    for good in glob.glob(os.path.join(corrupt, 'shards', 'toy-train-0*.tar')):
        os.remove(good)  # every shard drawn is the corrupt one
    return {'clean': clean, 'corrupt': corrupt, 'tmp': root}


@pytest.fixture(scope='module')
def single(worlds):
    output = worlds['tmp'] / 'single'
    proc = run(command(worlds['corrupt'], output))
    return {'output': output, 'log': log_text(output), 'stdout': proc.stdout}


def test_single_process_run_writes_logs_checkpoints_curves(single):
    log, folder = single['log'], run_dir(single['output'])
    assert 'effective global batch 16' in log and 'base_lr 0.001' in log
    steps = [int(s) for s in re.findall(r'Train \[\d/2\]\[\d+/8\] step (\d+) ', log)]
    assert steps[-1] == 16 and 'img/s' in log and 'eta' in log
    losses = [float(x) for x in re.findall(r'epoch \d done in [0-9:]+: loss ([0-9.]+)', log)]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert re.search(r'zero-shot toy_val \(subset templates\): acc1 [0-9.]+  acc5 [0-9.]+  over 48 images', log)
    for name in ('ckpt_epoch_0', 'ckpt_epoch_1', 'ckpt_best_acc1'):
        assert is_complete(os.path.join(folder, name)), name
    assert os.path.getsize(os.path.join(folder, 'loss_curves.png')) > 1000
    assert glob.glob(os.path.join(folder, 'tensorboard', 'events.out.tfevents*'))
    state = load_checkpoint(os.path.join(folder, 'ckpt_epoch_1'))
    assert state['epoch'] == 1 and state['step'] == 16 and state['optimizer'] is not None
    assert state['metrics']['best']['acc1']['split'] == 'toy_val (subset templates)'


def test_corrupt_shard_is_counted_and_the_run_finishes(single):
    log = single['log']
    whole_run = re.findall(r'bad training data in epoch 1: .*; whole run: (toy_train: skipped (\d+) \(([^)]*)\))', log)
    assert whole_run, log[-3000:]
    _, skipped, reasons = whole_run[-1]
    assert int(skipped) > 0 and 'undecodable_image' in reasons and 'missing_caption' in reasons
    assert 'truncated_tar' in reasons
    assert 'bad training data over the run: toy_train: skipped' in log


def test_eval_reproduces_the_best_checkpoint_accuracy(single, worlds):
    folder = run_dir(single['output'])
    best = load_checkpoint(os.path.join(folder, 'ckpt_best_acc1'))['metrics']['best']['acc1']
    out = worlds['tmp'] / 'eval'
    run(command(worlds['clean'], out, '--eval', '--resume', os.path.join(folder, 'ckpt_best_acc1')))
    with open(os.path.join(run_dir(out), 'zero_shot_cls.json')) as f:
        result = json.load(f)
    assert result['subset']['count'] == 48 and result['simple']['count'] == 48
    assert result['subset']['acc1'] == pytest.approx(best['value'])
    assert 0 <= result['subset']['acc1'] <= result['subset']['acc5'] <= 100


def test_two_processes_with_a_weights_only_resume_file(single, worlds):
    weights = worlds['tmp'] / 'published_like.safetensors'
    shutil.copy(os.path.join(run_dir(single['output']), 'ckpt_epoch_1', 'model.safetensors'), weights)
    output = worlds['tmp'] / 'ddp'
    proc = run(command(worlds['clean'], output, '--resume', str(weights), nproc=2))
    log = log_text(output)
    assert 'treated as init because it holds weights only' in log
    assert '0 names newly initialised' in log
    assert 'effective global batch 32' in log and '2 processes' in log
    assert re.findall(r'Train \[1/2\]\[4/4\] step (\d+)', log) == ['8']
    assert 'rank1' not in log and 'bad training data over the run: none' in log
    assert is_complete(os.path.join(run_dir(output), 'ckpt_epoch_1'))
    assert proc.returncode == 0


def test_sigkill_then_same_command_resumes_and_finishes(worlds):
    output = worlds['tmp'] / 'killed'
    cmd = command(worlds['clean'], output, epochs=3)
    env = dict(os.environ, OMP_NUM_THREADS='1')
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    first = None
    while time.time() < deadline and proc.poll() is None:
        first = glob.glob(os.path.join(str(output), '*', 'default', 'ckpt_epoch_0'))
        if first and is_complete(first[0]):
            break
        time.sleep(0.2)
    assert proc.poll() is None, 'the run ended before it could be killed'
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = sorted(os.path.basename(p) for p in glob.glob(os.path.join(run_dir(output), 'ckpt_epoch_*')))
    assert 'ckpt_epoch_2' not in killed_after
    run(cmd)
    log = log_text(output)
    restart = log[log.rindex('command: '):]
    newest = max(int(p.rsplit('_', 1)[1]) for p in killed_after)
    assert f'resuming from {os.path.join(run_dir(output), f"ckpt_epoch_{newest}")}' in restart
    assert f'resumed at epoch {newest + 1}, step {8 * (newest + 1)}' in restart
    assert f'training epochs {newest + 1}..2' in restart
    assert re.findall(r'Train \[2/3\]\[8/8\] step (\d+)', restart) == ['24']
    assert is_complete(os.path.join(run_dir(output), 'ckpt_epoch_2'))
    assert not os.path.exists(os.path.join(run_dir(output), 'ckpt_epoch_0'))  # max_kept: 2


def test_pgseg_initialised_from_the_groupvit_run(single, worlds):
    init = os.path.join(run_dir(single['output']), 'ckpt_epoch_1')
    output = worlds['tmp'] / 'pgseg'
    run(command(worlds['clean'], output, '--init', init, epochs=1, cfg='configs/toy/pgseg_tiny.yml'))
    log = log_text(output)
    new = re.search(r'newly initialised: (.*)', log).group(1).split(', ')
    assert 'img_encoder.layers.0.downsample_spatial.mu' in new and 'img_encoder.logit_scale' in new
    assert not any(n.startswith('img_encoder.layers.0.blocks') for n in new)
    assert re.search(r'epoch 0 done in [0-9:]+: loss [0-9.]+ loss_pg [0-9.]+ total_loss', log)
    state = load_checkpoint(os.path.join(run_dir(output), 'ckpt_epoch_0'))
    assert state['model']['img_encoder.layers.1.downsample_spatial.mu'].isfinite().all()


def test_tcl_custom_templates_evaluate_and_an_unknown_set_is_one_config_error(worlds):
    output = worlds['tmp'] / 'custom'
    run(command(worlds['clean'], output, '--eval', epochs=1)
        + ['evaluate.cls.template=custom', 'evaluate.cls.extra_templates=[simple]'])
    with open(os.path.join(run_dir(output), 'zero_shot_cls.json')) as f:
        result = json.load(f)
    assert result['custom']['count'] == result['simple']['count'] == 48
    assert 'zero-shot toy_val (custom templates): acc1' in log_text(output)
    cmd = command(worlds['clean'], worlds['tmp'] / 'fancy', '--eval', epochs=1) + ['evaluate.cls.template=fancy']
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert 'Traceback' not in proc.stdout + proc.stderr
    errors = [line for line in proc.stdout.splitlines() if ' ERROR ' in line]
    assert len(errors) == 1 and errors[0].endswith(
        "ERROR 'evaluate.cls.template' in --opts: unknown template set 'fancy'; choose one of custom, full, identity, "
        'simple, subset')
