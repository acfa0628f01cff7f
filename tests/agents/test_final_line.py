"""The agent's final line shows what the server finally credited, not what each submission's answer
said: with a quorum of 2 the first replica is credited only when the second one arrives, while the
first agent is still running (idle)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select
from tests.agents.test_runner import FakeScorer
from tests.platform_live import InThreadServer, admin_headers

from vlcurate.agents.runner import AgentConfig, AgentRunner, RunSummary
from vlcurate.server import db


@pytest.fixture
def server(tmp_path: Path) -> Iterator[InThreadServer]:
    with InThreadServer(str(tmp_path / "p.db"), sweep_seconds=0.2) as s:
        yield s


def _setup(url: str, pool: Path) -> None:
    h = admin_headers()
    httpx.post(
        f"{url}/api/v1/datasets", json={"name": "d", "source": str(pool)}, headers=h
    ).raise_for_status()
    body = {
        "name": "t",
        "dataset": "d",
        "model": "tiny-synth",
        "quorum": 2,
        "gold_per_unit": 0,
        "gold": {"self_score": 0},
        "unit_size": 300,  # the whole pool is one unit: the second agent gets its second replica
    }
    httpx.post(f"{url}/api/v1/tasks", json=body, headers=h, timeout=120).raise_for_status()


def _runner(url: str, contributor: str, **config: Any) -> AgentRunner:
    r = httpx.post(f"{url}/api/v1/agents", json={"contributor": contributor}, headers=admin_headers())
    r.raise_for_status()
    cfg = AgentConfig(server=url, token=r.json()["token"], idle_sleep=0.05, idle_sleep_max=0.1, **config)
    fp = FakeScorer().real.fingerprint
    return AgentRunner(cfg, scorer_loader=lambda *_: FakeScorer(fingerprint=fp))


def test_final_line_counts_credits_that_came_after_the_submission(
    server: InThreadServer, small_pool: Path
) -> None:
    _setup(server.url, small_pool)
    first = _runner(server.url, "alice", max_idle_s=6.0)
    out: list[RunSummary] = []
    t = threading.Thread(target=lambda: out.append(first.run()), daemon=True)
    t.start()
    deadline = time.monotonic() + 120
    while first.stats.units_done < 1 and time.monotonic() < deadline and t.is_alive():
        time.sleep(0.05)
    assert first.stats.units_done == 1 and first.stats.points_credited == 0.0  # pending at submit
    second = _runner(server.url, "bob", max_units=1, max_idle_s=5.0).run()
    assert second.units_done == 1
    t.join(timeout=60)
    (summary,) = out
    assert first.stats.me is not None
    with server.engine.connect() as conn:
        credits = conn.execute(select(db.ledger).where(db.ledger.c.kind == "credit")).all()
    alice_points = sum(c.points for c in credits if c.agent_id == first.stats.me.agent_id)
    assert alice_points > 0
    assert summary.points_at_submit == 0.0
    assert summary.points_credited == pytest.approx(alice_points)
    assert summary.points_total == pytest.approx(alice_points) and summary.contributor == "alice"
    line = summary.final_line()
    assert line.startswith(f"agent stopped (idle): 1 units, 300 pairs, +{alice_points:.1f} points credited")
    assert (
        f"+{alice_points:.1f} points credited while running; {alice_points:.1f} credited to alice so far"
        in line
    )


def test_final_line_without_the_server_falls_back_to_the_submissions() -> None:
    s = RunSummary("interrupted", 5, 600, 256.0, points_at_submit=256.0)
    line = s.final_line()
    assert line.startswith("agent stopped (interrupted): 5 units, 600 pairs, +256.0 points credited")
    assert "not reachable" in line
    s = RunSummary(
        "max_units", 5, 600, 300.0, points_total=600.0, points_at_submit=256.0, contributor="alice"
    )
    assert s.final_line() == (
        "agent stopped (max_units): 5 units, 600 pairs, +300.0 points credited while running; "
        "600.0 credited to alice so far"
    )
