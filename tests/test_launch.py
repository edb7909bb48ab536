"""tools/dist_launch.sh, dist_mn_launch.sh, slurm_train.sh: 2-process gloo runs on CPU and usage errors."""
import glob
import os
import signal
import socket
import stat
import subprocess
import sys
import time

import pytest

from tools.make_toy_data import make_toy_world

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, 'tools')

# all-reduces rank + 1 over the group and writes "<world size> <sum> <cfg> <extra>" to <out>/rank<r>.txt
ALLREDUCE = """
import argparse, os, torch, torch.distributed as dist
p = argparse.ArgumentParser()
p.add_argument('--cfg'); p.add_argument('--out'); p.add_argument('--extra')
a = p.parse_args()
dist.init_process_group('nccl' if torch.cuda.is_available() else 'gloo')
t = torch.tensor([dist.get_rank() + 1.0])
dist.all_reduce(t)
with open(os.path.join(a.out, f'rank{dist.get_rank()}.txt'), 'w') as f:
    f.write(f'{dist.get_world_size()} {t.item():g} {a.cfg} {a.extra}')
dist.destroy_process_group()
"""


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def job(tmp_path):
    script, cfg = tmp_path / 'allreduce.py', tmp_path / 'cfg.yml'
    script.write_text(ALLREDUCE)
    cfg.write_text('{}\n')
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()))
    return dict(script=str(script), cfg=str(cfg), out=tmp_path, env=env)


def start(cmd, env, cwd=None):
    """Start ``cmd`` in its own process group, so that a hung run can be killed with all its children."""
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, cwd=cwd)


def finish(procs, timeout=120):
    """Wait for ``procs``; kill the process groups of those still running. -> [(returncode, output)]"""
    results = []
    try:
        for p in procs:
            output = p.communicate(timeout=timeout)[0]
            results.append((p.returncode, output))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()


def rank_files(job, world):
    return [(job['out'] / f'rank{r}.txt').read_text() for r in range(world)]


def test_dist_launch_two_processes(job):
    cmd = [os.path.join(TOOLS, 'dist_launch.sh'), job['script'], job['cfg'], '2', '--out', str(job['out']),
           '--extra', 'passed']
    [(rc, output)] = finish([start(cmd, job['env'])])
    assert rc == 0, output
    assert rank_files(job, 2) == [f"2 3 {job['cfg']} passed"] * 2


def test_dist_mn_launch_two_nodes_on_localhost(job):
    def node(rank):
        cmd = [os.path.join(TOOLS, 'dist_mn_launch.sh'), job['script'], job['cfg'], str(rank), '2', '1', '127.0.0.1',
               '--out', str(job['out'])]
        return start(cmd, job['env'])

    results = finish([node(0), node(1)])
    assert [rc for rc, _ in results] == [0, 0], results
    assert rank_files(job, 2) == [f"2 3 {job['cfg']} None"] * 2


def slurm_stubs(tmp_path, job):
    """Stub srun runs the step once per node with SLURM_* set, each node in a session of its own (its pid listed in
    $STEP_PIDS); stub scontrol resolves the node list and logs requeues. -> env for slurm_train.sh"""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    stubs = {
        'srun': """#!/usr/bin/env bash
echo "$@" > "$SRUN_LOG"
while [[ $1 == -* ]]; do [[ $1 == --nodes=* ]] && nodes=${1#--nodes=}; shift; done
for ((i = 0; i < nodes; i++)); do
    SLURM_NODEID=$i SLURM_NNODES=$nodes SLURM_JOB_NODELIST='node[01-02]' SLURM_JOB_ID=4321 setsid "$@" &
    echo $! >> "$STEP_PIDS"
done
status=0; for p in $(jobs -p); do wait "$p" || status=$?; done; exit $status
""",
        'scontrol': """#!/usr/bin/env bash
[[ "$1 $2 $3" == "show hostnames node[01-02]" ]] && printf "127.0.0.1\\nx\\n"
[[ $1 == requeue ]] && echo "$@" >> "$SCONTROL_LOG"
exit 0
""",
    }
    for name, text in stubs.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(stat.S_IRWXU)
    return dict(job['env'], PATH=f"{bin_dir}:{os.environ['PATH']}", SRUN_LOG=str(tmp_path / 'srun.log'),
                SCONTROL_LOG=str(tmp_path / 'scontrol.log'), STEP_PIDS=str(tmp_path / 'steps.txt'),
                SRUN_ARGS='--time=00:05:00 --qos=test')


def test_slurm_train_sets_rendezvous_from_slurm_variables(job, tmp_path):
    env = slurm_stubs(tmp_path, job)
    cmd = [os.path.join(TOOLS, 'slurm_train.sh'), job['script'], job['cfg'], '2', '1', 'debug', '--out', str(job['out'])]
    [(rc, output)] = finish([start(cmd, env)])
    assert rc == 0, output
    assert rank_files(job, 2) == [f"2 3 {job['cfg']} None"] * 2
    srun_args = (tmp_path / 'srun.log').read_text().split()
    for flag in ('--partition=debug', '--nodes=2', '--ntasks-per-node=1', '--gres=gpu:1', '--time=00:05:00'):
        assert flag in srun_args
    assert not (tmp_path / 'scontrol.log').exists()


# a worker that waits for a preemption signal, then leaves as main_pg_seg.py does after its checkpoint
PREEMPTIBLE = """
import argparse, os, sys, time
p = argparse.ArgumentParser()
p.add_argument('--cfg'); p.add_argument('--out')
a = p.parse_args()
sys.path.insert(0, {repo!r})
from utils.signals import PreemptionSignals, exit_preempted
signals = PreemptionSignals().install()
open(os.path.join(a.out, f"ready{{os.environ['RANK']}}"), 'w').close()
while signals.received is None:
    time.sleep(0.05)
open(os.path.join(a.out, f"got{{os.environ['RANK']}}"), 'w').write(signals.received)
exit_preempted()
"""


def test_slurm_train_requeues_a_job_stopped_by_a_preemption_signal(job, tmp_path):
    """SIGUSR1 to every process of both nodes' steps, as SLURM's --signal=USR1@<seconds> does: torchrun lives on,
    the workers stop with status 3, node 0 requeues the job, and every step exits 3."""
    script = tmp_path / 'preemptible.py'
    script.write_text(PREEMPTIBLE.format(repo=REPO))
    env = slurm_stubs(tmp_path, job)
    cmd = [os.path.join(TOOLS, 'slurm_train.sh'), str(script), job['cfg'], '2', '1', 'debug', '--out', str(job['out'])]
    proc = start(cmd, env)
    deadline = time.time() + 120
    while not all((job['out'] / f'ready{r}').exists() for r in range(2)):
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read() if proc.poll() is not None else ''
        time.sleep(0.1)
    for step in (tmp_path / 'steps.txt').read_text().split():
        os.killpg(int(step), signal.SIGUSR1)
    [(rc, output)] = finish([proc])
    assert rc == 3, output
    assert [(job['out'] / f'got{r}').read_text() for r in range(2)] == ['SIGUSR1', 'SIGUSR1']
    assert (tmp_path / 'scontrol.log').read_text() == 'requeue 4321\n'
    assert 'requeued job 4321: it resumes from the checkpoint just written' in output
    assert output.count('preempted: the workers wrote a checkpoint and stopped; exit status 3') == 2


def test_dist_launch_trains_main_pg_seg_on_cpu(job, tmp_path):
    """2 processes, one short epoch of a tiny GroupViT on the toy world; the run folder records world size 2."""
    world = tmp_path / 'toy'
    make_toy_world(str(world), train_samples=64, samples_per_shard=16, cls_samples=16, seg_val=1, seg_tune=1)
    tiny = ['model.img_encoder.embed_dim=32', 'model.img_encoder.num_heads=[2,2,2]',
            'model.img_encoder.depths=[1,1,1]', 'model.img_encoder.num_group_tokens=[8,4,0]',
            'model.img_encoder.num_output_groups=[8,4]', 'model.text_encoder.width=32', 'model.text_encoder.layers=1',
            'model.output_dim=32', 'data.num_workers=0', 'train.epochs=1', 'train.warmup_epochs=0',
            'data.dataset.meta.toy_train.length=32', 'data.dataset.meta.toy_val.length=16']
    out = tmp_path / 'out'
    cmd = [os.path.join(TOOLS, 'dist_launch.sh'), 'main_pg_seg.py', 'configs/toy/groupvit_tiny.yml', '2',
           '--output', str(out), '--batch-size', '8', '--opts', f'data.root={world}', *tiny]
    [(rc, output)] = finish([start(cmd, job['env'], cwd=REPO)], timeout=300)
    assert rc == 0, output[-4000:]
    (run_dir,) = glob.glob(str(out / '*_bs8x2' / '*'))
    assert glob.glob(os.path.join(run_dir, 'ckpt_epoch_0*')), os.listdir(run_dir)


@pytest.mark.parametrize('script,args,message', [
    ('dist_launch.sh', [], 'expected at least 3 arguments, got 0'),
    ('dist_launch.sh', ['{script}', '{cfg}', 'two'], "NPROC must be a positive integer, got 'two'"),
    ('dist_launch.sh', ['missing.py', '{cfg}', '2'], 'SCRIPT not found: missing.py'),
    ('dist_launch.sh', ['{script}', 'missing.yml', '2'], 'CONFIG not found: missing.yml'),
    ('dist_mn_launch.sh', ['{script}', '{cfg}', '0', '2', '8'], 'expected at least 6 arguments, got 5'),
    ('dist_mn_launch.sh', ['{script}', '{cfg}', '2', '2', '8', 'host'], "NODE_RANK must be in 0..1, got '2'"),
    ('dist_mn_launch.sh', ['{script}', '{cfg}', '0', '0', '8', 'host'], "NNODES must be a positive integer, got '0'"),
    ('dist_mn_launch.sh', ['{script}', '{cfg}', '0', '2', 'x', 'host'], "NPROC_PER_NODE must be a positive integer"),
    ('slurm_train.sh', ['{script}', '{cfg}', '2', '8'], 'expected at least 5 arguments, got 4'),
    ('slurm_train.sh', ['{script}', '{cfg}', 'two', '8', 'gpu'], "NNODES must be a positive integer, got 'two'"),
])
def test_usage_on_wrong_arguments(job, script, args, message):
    args = [a.format(script=job['script'], cfg=job['cfg']) for a in args]
    proc = subprocess.run([os.path.join(TOOLS, script), *args], env=job['env'], capture_output=True, text=True,
                          timeout=30)
    assert proc.returncode == 2
    first = proc.stderr.splitlines()[0]
    assert first.startswith('error: ') and message in first
    assert f'usage: {os.path.join(TOOLS, script)} SCRIPT CONFIG' in proc.stderr
    assert not list(job['out'].glob('rank*.txt'))
