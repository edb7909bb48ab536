"""Training under what clusters do to it, on a small toy world with 2 gloo processes started by tools/dist_launch.sh.

One run folder lives through: SIGTERM to every process of the job (as SLURM does) -> a step checkpoint and exit
status 3, while a second job on the same folder is refused in one line; the same command resumes and is SIGKILLed
as a whole mid-epoch; it resumes again (taking over the dead job's lock) and only its launcher is SIGKILLed, after
which every process of the job must be gone within 10 s; the newest checkpoint is truncated; the last start falls
back to the previous checkpoint and finishes. Each rank records the sample keys it trains (train.record_samples):
in the end every epoch must have trained exactly the batches an uninterrupted run reads (computed in-process)."""
import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch

from datasets.shards import build_train_data
from test_train_e2e import CFG, REPO, TINY, free_port
from tools.make_toy_data import make_toy_world
from utils.checkpoint import is_complete
from utils.config import load_config

WORLD_SIZE, BATCH, WORKERS, EPOCHS, STEPS_PER_EPOCH = 2, 8, 2, 2, 8
OPTS = [*TINY, 'data.dataset.meta.toy_train.length=128', f'data.num_workers={WORKERS}', f'train.epochs={EPOCHS}',
        'evaluate.task=[]', 'checkpoint.save_every_steps=3', 'checkpoint.max_kept_steps=2', 'train.record_samples=true',
        'print_freq=1']
TIMEOUT = 400  # seconds for one start, on a loaded 2-core machine


def launch(world, output, name):
    """tools/dist_launch.sh with 2 processes in its own session; output goes to <output>/../<name>.out."""
    env = dict(os.environ, PYTHON=sys.executable, PORT=str(free_port()), OMP_NUM_THREADS='1')
    cmd = [os.path.join(REPO, 'tools', 'dist_launch.sh'), 'main_pg_seg.py', CFG, str(WORLD_SIZE),
           '--output', str(output), '--batch-size', str(BATCH), '--opts', f'data.root={world}', *OPTS]
    out = open(output.parent / f'{name}.out', 'w')
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.output = output.parent / f'{name}.out'
    return proc


def text_of(proc):
    return proc.output.read_text()


def run_dir(output):
    return os.path.join(str(output), f'groupvit_tiny_bs{BATCH}x{WORLD_SIZE}', 'default')


def wait_until(condition, proc, what, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f'the job ended (status {proc.returncode}) before {what}:\n{text_of(proc)[-3000:]}'
        assert time.time() < deadline, f'timed out waiting for {what}'
        time.sleep(0.05)


def proc_stat(pid):
    """(parent pid, state, start time) of a process, or None when it is gone."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            fields = f.read().rsplit(')', 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return int(fields[1]), fields[0], int(fields[19])


def process_tree(root):
    """{pid: start time} of `root` and all its descendants (torchrun's workers run in sessions of their own)."""
    parents = {}
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            stat = proc_stat(int(entry))
            if stat is not None and stat[1] != 'Z':
                parents[int(entry)] = stat
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in parents:
            tree[pid] = parents[pid][2]
            frontier += [child for child, (ppid, _, _) in parents.items() if ppid == pid]
    return tree


def alive(tree):
    """The processes of `tree` still running (a reused pid has another start time; zombies are dead)."""
    return [pid for pid, start in tree.items() if (stat := proc_stat(pid)) and stat[1] != 'Z' and stat[2] == start]


def signal_tree(tree, sig):
    for pid in alive(tree):
        os.kill(pid, sig)


def step_checkpoints(output):
    """{step: path} of the complete step checkpoints."""
    found = {}
    for path in glob.glob(os.path.join(run_dir(output), 'ckpt_step_*')):
        if is_complete(path):
            found[int(path.rsplit('_', 1)[1])] = path
    return found


def epoch_and_batch(step):
    """Where a step checkpoint stands (1 optimizer step per batch): the last batch of an epoch belongs to it."""
    epoch = (step - 1) // STEPS_PER_EPOCH
    return epoch, step - epoch * STEPS_PER_EPOCH


def trained_records(output):
    """{(rank, epoch, batch): [sample keys]} from samples_rank<r>.txt; a batch written again (by a run that resumed
    before it) replaces the earlier lines, since the earlier training of it was lost with its process."""
    records = {}
    for rank in range(WORLD_SIZE):
        path = os.path.join(run_dir(output), f'samples_rank{rank}.txt')
        previous = None
        for line in open(path).read().splitlines():
            epoch, batch, key = line.split(' ')
            where = (rank, int(epoch), int(batch))
            if where != previous:
                records[where] = []
                previous = where
            records[where].append(key)
    return records


def uninterrupted_records(world):
    """What an uninterrupted run trains: each rank's first STEPS_PER_EPOCH batches of every epoch's stream."""
    cfg = load_config(os.path.join(REPO, CFG))
    cfg.data.root, cfg.data.batch_size, cfg.data.num_workers = str(world), BATCH, WORKERS
    cfg.data.dataset.meta.toy_train.length = 128
    records = {}
    for rank in range(WORLD_SIZE):
        data = build_train_data(cfg.data, lambda img: torch.zeros(1), lambda text: torch.zeros(1), rank, WORLD_SIZE,
                                int(cfg.data.seed))
        assert data.steps_per_epoch == STEPS_PER_EPOCH
        for epoch in range(EPOCHS):
            data.set_epoch(epoch)
            for batch in range(STEPS_PER_EPOCH):
                records[(rank, epoch, batch)] = next(data)['keys']
    return records


@pytest.fixture(scope='module')
def faulted(tmp_path_factory):
    """Runs the whole story once; -> what each start did."""
    root = tmp_path_factory.mktemp('faults')
    world = root / 'toy'
    make_toy_world(str(world), train_samples=192, samples_per_shard=64, cls_samples=16, seg_val=1, seg_tune=1)
    output = root / 'out'
    seen = {'world': world, 'output': output}

    first = launch(world, output, 'first')
    wait_until(lambda: os.path.exists(os.path.join(run_dir(output), 'samples_rank0.txt'))
               and len(open(os.path.join(run_dir(output), 'samples_rank0.txt')).readlines()) >= 2 * BATCH,
               first, 'the first job trained 2 batches')
    tree = process_tree(first.pid)
    signal_tree(tree, signal.SIGSTOP)  # so that it cannot finish while the second job starts
    with open(os.path.join(run_dir(output), 'run.lock')) as f:
        seen['holder'] = json.load(f)
    second = launch(world, output, 'second')
    seen['second_status'] = second.wait(timeout=TIMEOUT)
    seen['second_text'] = text_of(second)
    signal_tree(tree, signal.SIGCONT)
    signal_tree(tree, signal.SIGTERM)  # SLURM: every process of the step
    seen['first_status'] = first.wait(timeout=TIMEOUT)
    seen['first_text'] = text_of(first)
    seen['after_sigterm'] = step_checkpoints(output)
    seen['lock_after_sigterm'] = os.path.exists(os.path.join(run_dir(output), 'run.lock'))

    killed = launch(world, output, 'killed')
    newest = max(seen['after_sigterm'])
    wait_until(lambda: max(step_checkpoints(output), default=0) > newest, killed, 'a new step checkpoint')
    signal_tree(process_tree(killed.pid), signal.SIGKILL)
    killed.wait(timeout=60)
    seen['after_sigkill'] = step_checkpoints(output)
    seen['killed_text'] = text_of(killed)

    orphaned = launch(world, output, 'orphaned')
    newest = max(seen['after_sigkill'])
    wait_until(lambda: max(step_checkpoints(output), default=0) > newest, orphaned, 'a new step checkpoint')
    tree = process_tree(orphaned.pid)
    (launcher,) = [pid for pid in tree if b'torch.distributed.run' in open(f'/proc/{pid}/cmdline', 'rb').read()]
    os.kill(launcher, signal.SIGKILL)
    start = time.time()
    while alive(tree) and time.time() - start < 30:
        time.sleep(0.1)
    seen['orphans_gone_after'] = time.time() - start
    seen['orphans_left'] = alive(tree)
    seen['tree_size'] = len(tree)
    orphaned.wait(timeout=60)
    seen['orphaned_text'] = text_of(orphaned)

    steps = step_checkpoints(output)
    seen['truncated'] = steps[max(steps)]
    state_file = os.path.join(seen['truncated'], 'state.pt')
    os.truncate(state_file, os.path.getsize(state_file) // 2)
    epochs = [int(p.rsplit('_', 1)[1]) for p in glob.glob(os.path.join(run_dir(output), 'ckpt_epoch_*'))
              if is_complete(p)]
    fallbacks = {**{step: path for step, path in step_checkpoints(output).items()},
                 **{STEPS_PER_EPOCH * (e + 1): os.path.join(run_dir(output), f'ckpt_epoch_{e}') for e in epochs}}
    seen['fallback'] = fallbacks[max(fallbacks)]  # an epoch end wins over a step checkpoint of the same step

    last = launch(world, output, 'last')
    seen['last_status'] = last.wait(timeout=TIMEOUT)
    seen['last_text'] = text_of(last)
    seen['log'] = open(os.path.join(run_dir(output), 'log.txt')).read()
    return seen


def test_second_job_on_a_held_run_folder_is_refused_in_one_line(faulted):
    holder = faulted['holder']
    assert holder['host'] == socket.gethostname() and isinstance(holder['pid'], int)
    assert faulted['second_status'] == 1
    errors = [line for line in faulted['second_text'].splitlines() if ' ERROR ' in line]
    assert len(errors) == 1, faulted['second_text'][-3000:]
    assert f"is in use by {holder['host']}:{holder['pid']} since {holder['since']}" in errors[0]
    assert 'main_pg_seg.py", line' not in faulted['second_text']  # no traceback of the training processes


def test_sigterm_writes_a_step_checkpoint_and_exits_3(faulted):
    assert faulted['first_status'] == 3, faulted['first_text'][-3000:]
    stopped = [line for line in faulted['first_text'].splitlines() if 'stopping on SIGTERM after step' in line]
    assert len(stopped) == 1
    step = int(stopped[0].split('after step ')[1].split(' ')[0])
    assert step in faulted['after_sigterm'] and f"resumes from {faulted['after_sigterm'][step]}" in stopped[0]
    assert 'exit status 3' in faulted['first_text'] and not faulted['lock_after_sigterm']
    restart = faulted['killed_text']
    epoch, batch = epoch_and_batch(step)
    assert f"resuming from {faulted['after_sigterm'][step]}" in restart
    assert f'resumed in epoch {epoch} after batch {batch}, step {step}' in restart


def test_sigkill_mid_epoch_then_the_same_command_resumes_from_the_last_step_checkpoint(faulted):
    newest = max(faulted['after_sigkill'])
    epoch, batch = epoch_and_batch(newest)
    assert batch < STEPS_PER_EPOCH  # save_every_steps=3 never falls on an epoch end before step 24
    restart = faulted['orphaned_text']
    assert f"resuming from {faulted['after_sigkill'][newest]}" in restart
    assert f'resumed in epoch {epoch} after batch {batch}, step {newest}' in restart
    assert 'took over' in restart and 'which is no longer running' in restart


def test_workers_of_a_killed_launcher_are_gone_within_10_s(faulted):
    assert faulted['tree_size'] >= 1 + 1 + WORLD_SIZE * (1 + WORKERS)  # bash, torchrun, workers, loader workers
    assert faulted['orphans_left'] == [] and faulted['orphans_gone_after'] < 10


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(faulted):
    assert faulted['last_status'] == 0, faulted['last_text'][-3000:]
    restart = faulted['last_text']
    assert f"checkpoint {faulted['truncated']} is incomplete" in restart
    assert f"resuming from {faulted['fallback']}\n" in restart
    assert 'done: best' in restart


def test_every_epoch_trained_exactly_the_samples_of_an_uninterrupted_run(faulted):
    trained, expected = trained_records(faulted['output']), uninterrupted_records(faulted['world'])
    assert sorted(trained) == sorted(expected)
    for where in expected:
        assert trained[where] == expected[where], where
    for epoch in range(EPOCHS):
        count = Counter(k for (_, e, _), keys in trained.items() if e == epoch for k in keys)
        assert sum(count.values()) == WORLD_SIZE * STEPS_PER_EPOCH * BATCH
        assert count == Counter(k for (_, e, _), keys in expected.items() if e == epoch for k in keys)
