"""The agent loop against the real coordinator (uvicorn in a thread, SQLite): scoring, statuses,
max units, a pinned model it does not have, pausing, heartbeats, Ctrl-C, an expired lease, the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import select, update
from tests.agents.test_runner import FakeScorer, agent_cmd, scene_jpg
from tests.platform_live import InThreadServer, admin_headers
from typer.testing import CliRunner

from vlcurate import __version__
from vlcurate.agents.client import PausedError
from vlcurate.agents.runner import AgentConfig, AgentRunner, ModelMismatchError
from vlcurate.cli.main import app
from vlcurate.server import db

CORRUPT = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An image folder: 3 good scenes, a corrupt JPEG, an image without a caption; 5 pairs per unit."""
    root = tmp_path_factory.mktemp("mixed")
    for i in range(3):
        img, cap = scene_jpg(20 + i)
        (root / f"p{i}.jpg").write_bytes(img)
        (root / f"p{i}.txt").write_text(cap)
    (root / "p3.jpg").write_bytes(CORRUPT)
    (root / "p3.txt").write_text("a green star")
    (root / "p4.jpg").write_bytes(scene_jpg(30)[0])  # no caption
    return root


class Live:
    def __init__(self, server: InThreadServer) -> None:
        self.server, self.url = server, server.url

    def task(self, source: Path, **opts: Any) -> dict[str, Any]:
        h = admin_headers()
        httpx.post(
            f"{self.url}/api/v1/datasets", json={"name": "d", "source": str(source)}, headers=h
        ).raise_for_status()
        body = {
            "name": "t",
            "dataset": "d",
            "model": "tiny-synth",
            "quorum": 1,
            "gold_per_unit": 0,
            "gold": {"self_score": 0},
            **opts,
        }
        r = httpx.post(f"{self.url}/api/v1/tasks", json=body, headers=h, timeout=120)
        r.raise_for_status()
        return dict(r.json())

    def agent(self, contributor: str) -> dict[str, Any]:
        r = httpx.post(
            f"{self.url}/api/v1/agents", json={"contributor": contributor}, headers=admin_headers()
        )
        r.raise_for_status()
        return dict(r.json())

    def runner(self, token: str, scorer: Any = None, **config: Any) -> tuple[AgentRunner, list[Any]]:
        loads: list[Any] = []

        def load(name: str, device: str, precision: str) -> Any:
            loads.append((name, device, precision))
            return scorer if scorer is not None else FakeScorer(fingerprint=FakeScorer().real.fingerprint)

        cfg = AgentConfig(
            server=self.url, token=token, idle_sleep=0.05, idle_sleep_max=0.1, max_idle_s=0.5, **config
        )
        return AgentRunner(cfg, scorer_loader=load), loads

    def rows(self, table: Any) -> list[Any]:
        with self.server.engine.connect() as conn:
            return list(conn.execute(select(table)).all())


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    with InThreadServer(str(tmp_path / "p.db"), sweep_seconds=0.2) as server:
        yield Live(server)


def test_scores_a_unit_with_every_status(live: Live, mixed_folder: Path) -> None:
    live.task(mixed_folder, unit_size=10)
    a = live.agent("alice")
    runner, loads = live.runner(a["token"])
    summary = runner.run()
    assert summary.reason == "idle" and summary.units_done == 1 and summary.pairs_scored == 5
    assert len(loads) == 1
    (sub,) = live.rows(db.submissions)
    assert sub.agent_version == __version__ and sub.state == "valid"
    scores = np.frombuffer(sub.scores, "<f4")
    assert sorted(sub.statuses.values()) == ["decode_error", "missing_text"]
    ok = [k for k in range(5) if str(k) not in sub.statuses]
    items = sorted(live.rows(db.items), key=lambda r: r.id)
    images = {r.item_id: r.data for r in live.rows(db.item_images)}
    from vlcurate.score.memory import score_pairs

    want = score_pairs(
        FakeScorer().real, [images.get(items[k].id) for k in ok], [items[k].caption for k in ok]
    )
    assert scores[ok] == pytest.approx([w.score for w in want], abs=0.02)
    assert (
        runner.stats.points_credited == 5.0
        and runner.stats.me is not None
        and runner.stats.me.contributor == "alice"
    )


def test_stops_after_max_units_with_one_model_load(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=50)
    runner, loads = live.runner(live.agent("bob")["token"], max_units=3)
    summary = runner.run()
    assert summary.reason == "max_units" and summary.units_done == 3 and len(loads) == 1
    subs = live.rows(db.submissions)
    assert len(subs) == 3 and len({s.idempotency_key for s in subs}) == 3


def test_a_model_that_is_not_the_pinned_one_hands_the_lease_back(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=300)
    runner, _ = live.runner(live.agent("carl")["token"], scorer=FakeScorer(fingerprint="0" * 64))
    with pytest.raises(ModelMismatchError, match="pins model 'tiny-synth'"):
        runner.run()
    (rep,) = live.rows(db.replicas)
    assert rep.state == "released" and live.rows(db.submissions) == []


def test_an_interrupt_swallowed_during_the_model_load_still_hands_the_lease_back(
    live: Live, small_pool: Path
) -> None:
    """Ctrl-C that lands inside an import or model load which catches BaseException is not lost:
    the runner's interrupt flag stops the unit before it is scored, and the lease goes back."""
    live.task(small_pool, unit_size=300)
    holder: list[AgentRunner] = []
    real = FakeScorer(fingerprint=FakeScorer().real.fingerprint)

    def load_swallowing_ctrl_c(name: str, device: str, precision: str) -> Any:
        try:
            holder[0].interrupt()  # what the CLI's signal handler does first ...
            raise KeyboardInterrupt  # ... then this, which a library's `except BaseException` eats
        except BaseException:
            return real

    cfg = AgentConfig(server=live.url, token=live.agent("ivy")["token"], idle_sleep=0.05, max_idle_s=0.5)
    runner = AgentRunner(cfg, scorer_loader=load_swallowing_ctrl_c)
    holder.append(runner)
    summary = runner.run()
    assert summary.reason == "interrupted" and summary.units_done == 0
    (rep,) = live.rows(db.replicas)
    assert rep.state == "released" and live.rows(db.submissions) == []


def test_a_paused_contributor_stops_with_the_reason(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=300)
    a = live.agent("dora")
    r = httpx.post(
        f"{live.url}/api/v1/contributors/{a['contributor_id']}/pause",
        json={"reason": "copied answers"},
        headers=admin_headers(),
    )
    assert r.status_code == 200
    runner, _ = live.runner(a["token"])
    with pytest.raises(PausedError) as err:
        runner.run()
    assert "copied answers" in err.value.reason and live.rows(db.replicas) == []
    cli = subprocess.run(
        agent_cmd(live.url),
        env=os.environ | {"VLCURATE_TOKEN": a["token"]},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 3 and "copied answers" in cli.stderr


def test_heartbeats_keep_a_slow_unit_and_ctrl_c_hands_it_back(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=300, lease_seconds=6)  # heartbeat every 2 s

    def slow_then_interrupt() -> None:
        time.sleep(7.0)  # longer than the lease: only heartbeats keep it
        raise KeyboardInterrupt

    runner, _ = live.runner(
        live.agent("eve")["token"],
        scorer=FakeScorer(fingerprint=FakeScorer().real.fingerprint, on_score=slow_then_interrupt),
    )
    summary = runner.run()
    assert summary.reason == "interrupted" and summary.units_done == 0
    (rep,) = live.rows(db.replicas)
    assert rep.state == "released"  # not expired: the heartbeats kept it, Ctrl-C handed it back
    assert (rep.deadline - rep.leased_at).total_seconds() > 8


def test_an_expired_lease_is_dropped_and_the_agent_goes_on(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=150)
    engine = live.server.engine

    def expire_my_lease() -> None:
        with db.begin_write(engine) as conn:  # as if the agent had been away past its deadline
            conn.execute(
                update(db.replicas)
                .where(db.replicas.c.state == "leased")
                .values(deadline=db.utcnow().replace(year=2000))
            )
        time.sleep(0.6)  # the sweeper requeues it

    calls = {"n": 0}

    def first_only() -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            expire_my_lease()

    runner, _ = live.runner(
        live.agent("finn")["token"],
        scorer=FakeScorer(fingerprint=FakeScorer().real.fingerprint, on_score=first_only),
        max_units=1,
    )
    summary = runner.run()
    assert runner.stats.units_dropped == 1 and "expired" in (runner.stats.last_error or "")
    assert summary.units_done == 1  # it went on to the next unit
    states = sorted(r.state for r in live.rows(db.replicas))
    assert states == ["expired", "valid"]


def test_cli_with_the_live_view_finishes_after_max_units(live: Live, small_pool: Path) -> None:
    live.task(small_pool, unit_size=100)
    tok = live.agent("gus")["token"]
    r = CliRunner().invoke(
        app,
        ["agent", "run", "--server", live.url, "--max-units", "1", "--device", "cpu"],
        env={"VLCURATE_TOKEN": tok},
    )
    assert r.exit_code == 0, r.output
    assert "agent stopped (max_units): 1 units, 100 pairs" in r.output
    assert len(live.rows(db.submissions)) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signals_hand_the_lease_back_and_exit_zero(
    live: Live, small_pool: Path, sig: signal.Signals
) -> None:
    live.task(small_pool, unit_size=300, quorum=1)
    tok = live.agent("hal")["token"]
    proc = subprocess.Popen(
        agent_cmd(live.url),
        env=os.environ | {"VLCURATE_TOKEN": tok},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The agent logs "loading model" once it has its lease in hand (the task names the model):
        # only then can it know what to hand back.
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if "loading model" in line:
                break
        proc.send_signal(sig)
        _, rest = proc.communicate(timeout=60)
        err = "".join(seen) + rest
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    states = [r.state for r in live.rows(db.replicas)]
    assert states and states[-1] in ("released", "valid"), states  # handed back, or it had just finished


def test_the_console_shows_caption_score_rate_points_reputation_and_errors(
    live: Live, mixed_folder: Path
) -> None:
    from rich.console import Console

    from vlcurate.agents.console import render
    from vlcurate.agents.runner import AgentStats

    con = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    con.print(render(AgentStats(), live.url))  # before anything happened
    live.task(mixed_folder, unit_size=10)
    runner, _ = live.runner(live.agent("ivy")["token"])
    runner.run()
    runner.stats.error("HTTP 503: restarting")
    con.print(render(runner.stats, live.url))
    text = con.export_text()
    assert "pairs/s" in text and "ivy" in text and "restarting" in text and "reputation" in text
    # The current pair is the unit's last scored one; which three pairs are "recent" depends on the
    # lease's shuffled order, so it is not asserted.
    assert runner.stats.last_pair is not None and (runner.stats.last_pair.caption or "")[:30] in text
