"""`kill -9` of `vlcurate score` takes every process it started with it: the multiprocessing fork
server, the decode workers and the resource tracker. Only the job itself is killed here (not its
process group), as a user's `kill -9 PID` or the OOM killer does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from vlcurate.base.workers import init_worker, set_parent_death_signal, wait_for_exit
from vlcurate.synth.pool import write_pool

WORKERS = 2


def _alive(p: psutil.Process) -> bool:
    """Running, not a zombie (an orphan whose new parent does not reap it is dead all the same)."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process-tree check written for Linux")
def test_kill_minus_nine_of_score_leaves_no_process_behind(tmp_path: Path) -> None:
    write_pool(tmp_path / "pool", 6000, seed=3, shard_size=500)
    cmd = [
        sys.executable,
        "-m",
        "vlcurate.cli.main",
        "score",
        str(tmp_path / "pool" / "shards"),
        "--out",
        str(tmp_path / "run"),
        "--model",
        "tiny-synth",
        "--workers",
        str(WORKERS),
        "--batch-size",
        "32",
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    tree: list[psutil.Process] = []
    try:
        # Wait for the fork server and both decode workers, with work in flight.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            tree = [p for p in _descendants(proc.pid) if _alive(p)]
            started = (tmp_path / "run" / "done").is_dir() and any((tmp_path / "run" / "done").iterdir())
            if len(tree) >= WORKERS + 1 and started:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the job ended before it could be killed; make the pool larger"
        tree = [p for p in _descendants(proc.pid) if _alive(p)]
        assert len(tree) >= WORKERS + 1, [p.cmdline() for p in tree]
        os.kill(proc.pid, signal.SIGKILL)  # the job only, not its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in tree):
            time.sleep(0.05)
        left = [(p.pid, " ".join(p.cmdline())[:120]) for p in tree if _alive(p)]
        assert not left, f"still running 5 s after kill -9 of the job: {left}"
    finally:  # whatever the outcome, leave nothing running
        for p in tree + _descendants(proc.pid):
            if _alive(p):
                p.kill()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_worker_watchdog_ends_a_process_whose_job_is_gone(tmp_path: Path) -> None:
    """The initializer's watchdog on its own: a 'worker' whose job dies exits within a second."""
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code = (
        "import sys, time\n"
        "from vlcurate.base.workers import init_worker\n"
        f"init_worker({job.pid})\n"
        "print('armed', flush=True)\n"
        "time.sleep(60)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert worker.stdout is not None and worker.stdout.readline().strip() == "armed"
        assert worker.poll() is None
        job.kill()
        job.wait()
        t0 = time.monotonic()
        worker.wait(timeout=10)
        assert time.monotonic() - t0 < 5
    finally:
        for p in (job, worker):
            if p.poll() is None:
                p.kill()
                p.wait()


def test_helpers_in_process() -> None:
    init_worker(os.getpid())  # watching itself: a no-op, never ends the caller
    wait_for_exit(2**22 + 12345)  # no such process: returns at once
    if sys.platform.startswith("linux"):
        code = "from vlcurate.base.workers import set_parent_death_signal as s; print(s())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "True"
    else:
        assert set_parent_death_signal() is False
