"""utils/run_lock.py: one job per run folder; a dead holder on this host is taken over, any other holder refused."""
import json
import os
import socket
import subprocess
import sys

import pytest

from utils.run_lock import LOCK_NAME, TAKEOVER_SUFFIX, RunLock, RunLockedError, hold_run_folder


def dead_pid():
    proc = subprocess.Popen([sys.executable, '-c', 'pass'])
    proc.wait()
    return proc.pid


def write_lock(folder, **holder):
    folder.mkdir(exist_ok=True)
    (folder / LOCK_NAME).write_text(json.dumps(holder))


def test_a_free_folder_is_taken_and_released(tmp_path):
    folder = tmp_path / 'run'
    lock = hold_run_folder(str(folder))
    holder = json.loads((folder / LOCK_NAME).read_text())
    assert holder['host'] == socket.gethostname() and holder['pid'] == os.getpid() and holder['since']
    assert lock.took_over is None and os.listdir(folder) == [LOCK_NAME]
    lock.release()
    assert os.listdir(folder) == []


def test_a_live_holder_is_refused_with_one_line_naming_it(tmp_path):
    first = RunLock.acquire(str(tmp_path))
    with pytest.raises(RunLockedError) as err:
        hold_run_folder(str(tmp_path))
    message = str(err.value)
    assert '\n' not in message and message.startswith(f'run folder {tmp_path} is in use by ')
    assert f"{socket.gethostname()}:{os.getpid()} since {first.holder['since']}" in message
    assert json.loads((tmp_path / LOCK_NAME).read_text()) == first.holder  # untouched, and no draft left
    assert os.listdir(tmp_path) == [LOCK_NAME]


def test_a_dead_holder_on_this_host_is_taken_over(tmp_path):
    pid = dead_pid()
    write_lock(tmp_path, host=socket.gethostname(), pid=pid, since='2020-01-01T00:00:00')
    lock = RunLock.acquire(str(tmp_path))
    assert lock.took_over == (f'took over {tmp_path / LOCK_NAME} from {socket.gethostname()}:{pid} since '
                              '2020-01-01T00:00:00, which is no longer running')
    assert json.loads((tmp_path / LOCK_NAME).read_text())['pid'] == os.getpid()
    assert sorted(os.listdir(tmp_path)) == [LOCK_NAME]


def test_other_hosts_unreadable_locks_and_a_takeover_in_progress_are_refused(tmp_path):
    write_lock(tmp_path, host='elsewhere', pid=dead_pid(), since='2020-01-01T00:00:00')
    with pytest.raises(RunLockedError, match=r'in use by elsewhere:\d+ since 2020-01-01T00:00:00 .*from another '
                                             'host is not taken over: if that job is gone, delete the file'):
        RunLock.acquire(str(tmp_path))
    (tmp_path / LOCK_NAME).write_text('')
    with pytest.raises(RunLockedError, match="is not a lock this project wrote \\(''\\); if no job runs in"):
        RunLock.acquire(str(tmp_path))
    write_lock(tmp_path, host=socket.gethostname(), pid=dead_pid(), since='2020-01-01T00:00:00')
    (tmp_path / (LOCK_NAME + TAKEOVER_SUFFIX)).write_text('{}')
    with pytest.raises(RunLockedError, match='another job is taking over .*; if none is starting, delete'):
        RunLock.acquire(str(tmp_path))


def test_release_leaves_a_lock_that_is_not_its_own(tmp_path):
    lock = RunLock.acquire(str(tmp_path))
    write_lock(tmp_path, host='elsewhere', pid=1, since='now')
    lock.release()
    assert json.loads((tmp_path / LOCK_NAME).read_text())['host'] == 'elsewhere'
