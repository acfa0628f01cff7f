"""Decode worker processes that die with the job that started them, even after `kill -9`.

A `ProcessPoolExecutor` worker blocks on its call queue forever once its job is gone: it holds
both ends of that pipe, so it never reads an end of file. With the `forkserver` start method the
workers are children of the fork server, not of the job, and each holds the fork server's
"alive" pipe, which keeps the fork server up as long as any worker lives. So a job killed with
`kill -9` used to leave the fork server and every decode worker running.

Each worker is now tied to the job in two ways, armed by the pool's initializer:

- a watchdog thread waits on the job's process (a pidfd on Linux, polling elsewhere) and ends
  the worker at once when the job ends, however it ended;
- on Linux, `prctl(PR_SET_PDEATHSIG, SIGKILL)` makes the kernel kill the worker when its parent
  dies (the fork server, or the job itself with the `spawn`/`fork` start methods).

With the workers gone, nothing holds the fork server's "alive" pipe any more: it reads end of
file and exits, and so does multiprocessing's resource tracker. No process of the job survives it.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import select
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_S = 0.5  # how often the watchdog looks where it cannot wait on a pidfd


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent dies (Linux only).

    The "parent" is the thread that forked this process: call it only in processes forked by a
    thread that lives as long as the parent process does (a fork server, a main thread).
    Returns whether it was armed.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _process_gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for_exit(pid: int) -> None:
    """Return once process `pid` has ended (at once if it already has)."""
    fd: int | None = None
    try:
        fd = os.pidfd_open(pid)  # Linux >= 5.3: readable once the process has exited
    except ProcessLookupError:
        return
    except (AttributeError, OSError):
        fd = None
    if fd is not None:
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)
        return
    while not _process_gone(pid):
        time.sleep(POLL_S)


def _watch_owner(owner_pid: int) -> None:
    wait_for_exit(owner_pid)
    os._exit(1)  # the job is gone: nobody will read what this worker produces


def init_worker(owner_pid: int) -> None:
    """Pool initializer: die with the job (`owner_pid`) and with the parent process."""
    set_parent_death_signal()
    if owner_pid == os.getpid():  # in-process use (tests): nothing to watch
        return
    threading.Thread(target=_watch_owner, args=(owner_pid,), name="vlcurate-owner-watch", daemon=True).start()


def start_method() -> str:
    """forkserver on POSIX (fast, safe with the job's threads), spawn on Windows."""
    return "forkserver" if sys.platform != "win32" else "spawn"


def decode_pool(workers: int) -> ProcessPoolExecutor:
    """A pool of `workers` decode processes that end when this process ends, even on `kill -9`."""
    ctx = multiprocessing.get_context(start_method())
    return ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=init_worker, initargs=(os.getpid(),)
    )
