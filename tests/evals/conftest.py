"""Real tiny-synth servers on loopback for the eval tests (uvicorn in threads, one shared scorer, per
session): `plain`, `weak` (blind to red, refuses counting, garbles shape answers), `empty` (every
reply empty), `hang` (every reply hangs 5 s: a judge that times out) and `slow` (150 ms a reply: a
run to kill half way); and a small synthetic benchmark."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.evals.live import InThreadVLM

from vlcurate.synth.bench import make_benchmark

SERVERS: dict[str, dict[str, Any]] = {
    "plain": {},
    "weak": {"weakness": "blind-colour=red,refuse=count,garble=shape"},
    "empty": {"faults": "empty=1"},
    "hang": {"faults": "timeout=1", "hang_s": 5.0},
    "slow": {"latency_ms": 150.0},
}


@pytest.fixture(scope="session")
def servers() -> Iterator[dict[str, InThreadVLM]]:
    with InThreadVLM.many(SERVERS) as started:
        yield started


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """18 questions (three scenes' worth of every category) with their PNGs."""
    return make_benchmark(tmp_path_factory.mktemp("bench"), 18, seed=0)
