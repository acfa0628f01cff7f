"""Helpers shared by the benchmark scripts: where the data lives, what machine ran, how results leave.

Every benchmark prints one JSON object on stdout (machine-readable, diffable between runs) and one
summary line on stderr (what a person reads in CI logs), so both live here to stay identical.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import sys
import threading
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    """The shared folder beside the repository (`VLCURATE_SHARED` overrides it for other layouts)."""
    env = os.environ.get("VLCURATE_SHARED")
    return Path(env).expanduser().resolve() if env else (REPO_ROOT.parent / "shared").resolve()


def bench_dir() -> Path:
    """Scratch and cache space for benchmarks (`.bench/` in the repo, which git ignores)."""
    path = REPO_ROOT / ".bench"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cpu_model() -> str:
    """The CPU's marketing name; `platform.processor()` is empty on most Linux systems."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, torch, native bf16, and how busy the machine was."""
    import torch

    from vlcurate.models.device import cpu_supports_bf16

    info: dict[str, Any] = {
        "cpu_model": cpu_model(),
        "cores": os.cpu_count(),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "bf16_native": cpu_supports_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):  # a load average well above 0 means the figures are noisy
        info["loadavg_1m_at_start"] = round(os.getloadavg()[0], 2)
    return info


def emit(result: dict[str, Any], summary: str, json_out: str | Path | None) -> None:
    """Print the JSON on stdout and the one-line summary on stderr; also write the JSON to a file."""
    text = json.dumps(result, indent=2, sort_keys=False)
    if json_out:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    sys.stdout.write(text + "\n")
    sys.stdout.flush()
    sys.stderr.write(summary + "\n")
    sys.stderr.flush()


def log(message: str) -> None:
    """Progress for a person watching; stderr so that stdout stays one JSON object."""
    sys.stderr.write(f"[bench] {message}\n")
    sys.stderr.flush()


class TreePeakRss:
    """Peak RSS of a process and all its descendants, sampled every `interval` seconds in a thread.

    Why: a job's workers (decode pools, Ray's GCS/raylet/actors, Data-Juicer's workers) hold most of
    its memory, so the parent's own peak says little. Use as `with TreePeakRss(pid) as rss: ...`
    and read `rss.peak_mib` afterwards.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self._proc = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self.peak = 0

    def _tree_rss(self) -> int:
        total = 0
        for p in [self._proc, *self._proc.children(recursive=True)]:
            with contextlib.suppress(Exception):  # a worker that just exited
                total += p.memory_info().rss
        return total

    def _sample(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(self._interval)

    def __enter__(self) -> TreePeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mib(self) -> float:
        return round(self.peak / 2**20, 1)
