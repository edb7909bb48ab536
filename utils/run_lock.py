"""One job per run folder: <run>/run.lock names the process holding the folder (host, pid, since when).

Rank 0 takes the lock before anything is written into the folder and removes it on every way out of the process.
A SIGKILL leaves it behind: the next job on the same host finds that pid gone and takes the folder over (the log says
so); a lock from another host is never taken over, since its pid cannot be checked from here.
"""
import datetime
import json
import os
import os.path as osp
import socket
from dataclasses import dataclass
from typing import Optional

from .distributed import from_main_process, is_main_process

LOCK_NAME = 'run.lock'
TAKEOVER_SUFFIX = '.takeover'
ATTEMPTS = 3


class RunLockedError(RuntimeError):
    """Another job holds the run folder (or its lock cannot be read)."""


def _holder_text(holder: dict) -> str:
    return f"{holder.get('host')}:{holder.get('pid')} since {holder.get('since')}"


def _read(path: str) -> Optional[dict]:
    """The holder recorded in a lock file; None when the file is gone; RunLockedError when it is not a lock."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    try:
        holder = json.loads(text)
        if not isinstance(holder, dict) or not isinstance(holder.get('pid'), int) or not holder.get('host'):
            raise ValueError('no host and pid')
    except ValueError:
        raise RunLockedError(f'{path} is not a lock this project wrote ({text[:80]!r}); if no job runs in '
                             f'{osp.dirname(path)}, delete it') from None
    return holder


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a process of another user has the pid
        return True
    return True


@dataclass
class RunLock:
    """The lock this process holds; `took_over` describes a dead holder it replaced (None when the folder was free)."""
    path: str
    holder: dict
    took_over: Optional[str] = None

    @classmethod
    def acquire(cls, folder: str) -> 'RunLock':
        """Create <folder>/run.lock (atomically, with its content) or raise RunLockedError naming the holder."""
        os.makedirs(folder, exist_ok=True)
        path = osp.join(folder, LOCK_NAME)
        me = {'host': socket.gethostname(), 'pid': os.getpid(),
              'since': datetime.datetime.now().isoformat(timespec='seconds')}
        draft = f'{path}.{me["host"]}.{me["pid"]}.draft'
        with open(draft, 'w') as f:
            json.dump(me, f)
        took_over = None
        try:
            for _ in range(ATTEMPTS):
                try:
                    os.link(draft, path)  # fails when the file exists: no window in which the lock is empty
                    return cls(path, me, took_over)
                except FileExistsError:
                    pass
                holder = _read(path)
                if holder is None:
                    continue
                if holder['host'] != me['host']:
                    raise RunLockedError(
                        f'run folder {folder} is in use by {_holder_text(holder)} ({path}); a lock from another host '
                        'is not taken over: if that job is gone, delete the file')
                if _is_running(holder['pid']):
                    raise RunLockedError(
                        f'run folder {folder} is in use by {_holder_text(holder)} ({path}): stop that job, or use '
                        'another --output / --tag')
                cls._remove_stale(path, holder, draft)
                took_over = f'took over {path} from {_holder_text(holder)}, which is no longer running'
            raise RunLockedError(f'could not take {path} in {ATTEMPTS} attempts: other jobs keep starting on {folder}')
        finally:
            os.remove(draft)

    @staticmethod
    def _remove_stale(path: str, stale: dict, draft: str):
        """Delete the lock of a dead holder, unless it changed meanwhile; one job at a time (the .takeover guard), so
        that no job deletes a lock that another has just created."""
        guard = path + TAKEOVER_SUFFIX
        try:
            os.link(draft, guard)
        except FileExistsError:
            raise RunLockedError(f'another job is taking over {path}; if none is starting, delete {guard}') from None
        try:
            if _read(path) == stale:
                os.remove(path)
        finally:
            os.remove(guard)

    def release(self):
        """Remove the lock file if it still names this holder (a file that is not a lock is left alone)."""
        try:
            with open(self.path) as f:
                mine = f.read() == json.dumps(self.holder)
        except FileNotFoundError:
            mine = False
        if mine:
            os.remove(self.path)


def hold_run_folder(folder: str) -> Optional[RunLock]:
    """Rank 0 takes the folder's lock and every rank learns the outcome, so that all stop together when it is held:
    -> the lock on rank 0, None on the others; RunLockedError on every rank when refused."""
    lock, refusal = None, None
    if is_main_process():
        try:
            lock = RunLock.acquire(folder)
        except RunLockedError as e:
            refusal = str(e)
    refusal = from_main_process(refusal)
    if refusal:
        raise RunLockedError(refusal)
    return lock
