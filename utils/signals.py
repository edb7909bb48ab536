"""How a training process reacts to what a cluster does to it: preemption signals and the death of its launcher.

Preemption: SLURM sends SIGTERM (and, with `--signal=USR1@<seconds>`, SIGUSR1 ahead of time) to every process of a
job step before it kills the step. `PreemptionSignals` turns both into a flag that the training loop reads after each
optimizer step; the run then writes a step checkpoint and leaves through `exit_preempted` with PREEMPTED_EXIT_STATUS.
torchrun exits 1 whatever its workers' statuses, so each worker also creates the file named by $PGSEG_PREEMPTED_MARKER
(set by tools/dist_mn_launch.sh, which then exits 3 itself; tools/slurm_train.sh requeues the job on 3).

Launcher death: a worker started by torchrun asks the kernel for SIGKILL when its parent dies (`die_with_launcher`),
and so do the data loader workers (`protect_loader_worker`); a SIGKILL leaves at most a hidden temporary checkpoint
folder, never a partial checkpoint under its final name.
"""
import atexit
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from typing import Optional

PREEMPTED_EXIT_STATUS = 3
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
MARKER_ENV = 'PGSEG_PREEMPTED_MARKER'
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PARENT_POLL_SECONDS = 1.0


class PreemptionSignals:
    """Records the first SIGTERM / SIGUSR1 instead of dying of it; `received` is its name (None before).
    `restore` puts back the handlers that `install` replaced (main() may run inside another program)."""

    def __init__(self):
        self.received: Optional[str] = None
        self.previous = {}

    def install(self) -> 'PreemptionSignals':
        for sig in PREEMPTION_SIGNALS:
            self.previous[sig] = signal.signal(sig, self._record)
        return self

    def restore(self):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def _record(self, signum, frame):
        if self.received is None:
            self.received = signal.Signals(signum).name


def exit_preempted():
    """Leave with PREEMPTED_EXIT_STATUS after the checkpoint is written; tell the launch script through its marker."""
    marker = os.environ.get(MARKER_ENV)
    if marker:
        with open(marker, 'a'):
            pass
    sys.exit(PREEMPTED_EXIT_STATUS)


def launched_by_torchrun() -> bool:
    return 'TORCHELASTIC_RUN_ID' in os.environ


def _ask_kernel_for_sigkill_on_parent_death() -> bool:
    """prctl(PR_SET_PDEATHSIG, SIGKILL); False where the call does not exist (not Linux)."""
    if not sys.platform.startswith('linux'):
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f'prctl(PR_SET_PDEATHSIG) failed: {os.strerror(errno)}')
    return True


def _watch_parent(parent_pid: int):
    while os.getppid() == parent_pid:
        time.sleep(PARENT_POLL_SECONDS)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(parent_pid: int):
    """SIGKILL this process when `parent_pid` (its parent when it started) exits: the kernel's parent-death signal on
    Linux, a thread polling the parent pid elsewhere. Exits at once when the parent is already gone."""
    if not _ask_kernel_for_sigkill_on_parent_death():
        threading.Thread(target=_watch_parent, args=(parent_pid, ), daemon=True, name='parent-watchdog').start()
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)


def die_with_launcher(launcher_pid: int):
    """Under torchrun: stop within seconds when torchrun dies (a SIGKILLed launcher would otherwise leave its
    workers training on as orphans). `launcher_pid`: os.getppid() taken when the process started."""
    if launched_by_torchrun():
        die_with_parent(launcher_pid)


_training_exits = None


def training_exit_flag():
    """Shared memory that the training process sets when it exits; created once, before its loader workers start."""
    global _training_exits
    if _training_exits is None:
        _training_exits = multiprocessing.RawValue('b', 0)
        # registered after multiprocessing's own exit handler, so it runs before that one terminates the workers
        atexit.register(_set_flag, _training_exits)
    return _training_exits


def _set_flag(flag):
    flag.value = 1


def protect_loader_worker(training_pid: int, training_exits):
    """In a data loader worker: die with the training process `training_pid`, and leave preemption signals to it.
    SLURM signals every process of the step, and a loader worker dying of SIGTERM makes torch raise in the training
    process mid-step, or starves it of its next batch; so SIGUSR1 is ignored and SIGTERM ends the worker only once
    the training process exits (`training_exits`, from `training_exit_flag`: multiprocessing then terminates its
    workers with SIGTERM) or is gone."""
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: _end_loader_worker(training_pid, training_exits))
    die_with_parent(training_pid)


def _end_loader_worker(training_pid: int, training_exits):
    if training_exits.value or os.getppid() != training_pid:
        os._exit(0)
