"""AgentRunner: item results, the lease loop, heartbeats, model pinning and clean shutdown.

Unit tests run the runner against the scripted HTTP server of test_client (a fake coordinator
that serves leases, images and records submissions); the model is either the bundled tiny-synth
(real decode and scoring) or a trivial fake scorer where only the loop's behaviour matters.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from vlcurate.agents.runner import (
    AgentConfig,
    AgentRunner,
    AgentStats,
    Fetched,
    build_results,
)
from vlcurate.base.images import decode_image
from vlcurate.server import schemas
from vlcurate.synth.scene import scene_from_seed

REPO = Path(__file__).resolve().parents[2]
CORRUPT = b"\xff\xd8\xff\xe0" + b"\x00garbage" * 20  # JPEG magic, broken body


# ---- helpers -----------------------------------------------------------------------------


_TINY: Any = None


class FakeScorer:
    """The real bundled tiny-synth model, with a chosen fingerprint and a hook on every model call
    (to make scoring slow, or interrupt it): the model is never faked, only observed."""

    def __init__(self, fingerprint: str = "fake-fp", on_score: Callable[[], None] | None = None):
        global _TINY
        if _TINY is None:
            from vlcurate.models.loader import load_scorer

            _TINY = load_scorer("tiny-synth", device="cpu", precision="fp32")
        self.real = _TINY
        self._fp = fingerprint
        self.on_score = on_score
        self.calls = 0

    @property
    def fingerprint(self) -> str:
        return self._fp

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    def encode_images(self, images: np.ndarray) -> Any:
        self.calls += 1
        if self.on_score is not None:
            self.on_score()
        return self.real.encode_images(images)


def scene_jpg(i: int) -> tuple[bytes, str]:
    s = scene_from_seed(7, i)
    return s.encode("jpg"), s.caption_text


def pixels(data: bytes, size: int) -> np.ndarray:
    d = decode_image(data, size)
    assert d.array is not None
    return d.array


@pytest.fixture(scope="module")
def tiny() -> Any:
    from vlcurate.models.loader import load_scorer

    return load_scorer("tiny-synth", device="cpu", precision="fp32")


# ---- build_results ---------------------------------------------------------------------------


def test_build_results_statuses_and_scores_match_the_model(tiny: Any) -> None:
    (img0, cap0), (img1, cap1) = scene_jpg(0), scene_jpg(1)
    items = [
        schemas.UnitItem(item_id="good0", caption=cap0, image_url="/x/0"),
        schemas.UnitItem(item_id="corrupt", caption="a red circle", image_url="/x/1"),
        schemas.UnitItem(item_id="nocap", caption=None, image_url="/x/2"),
        schemas.UnitItem(item_id="emptycap", caption="", image_url="/x/3"),
        schemas.UnitItem(item_id="unfetched", caption="a blue square", image_url="/x/4"),
        schemas.UnitItem(item_id="good1", caption=cap1, image_url="/x/5"),
        schemas.UnitItem(item_id="mismatch", caption=cap0, image_url="/x/6"),
        schemas.UnitItem(item_id="nocap-corrupt", caption=None, image_url="/x/7"),
    ]
    fetched = [
        Fetched(img0),
        Fetched(CORRUPT),
        Fetched(img0),
        Fetched(img0),
        Fetched(None, "fetch_error", "HTTP 404"),
        Fetched(img1),
        Fetched(img1),
        Fetched(CORRUPT),
    ]
    res = build_results(items, fetched, tiny, batch_size=2)
    assert [r.item_id for r in res] == [it.item_id for it in items]
    assert [r.status for r in res] == [
        "ok",
        "decode_error",
        "missing_text",
        "missing_text",
        "fetch_error",
        "ok",
        "ok",
        "decode_error",  # as `vlcurate score` says: the unreadable image outranks the missing caption
    ]
    assert all(r.score is None for r in res if r.status != "ok")
    size = tiny.preprocessing.image_size
    arrays = np.stack([pixels(b, size) for b in (img0, img1, img1)])
    expect = tiny.score(arrays, [cap0, cap1, cap0])
    got = [float(r.score or 0.0) for r in res if r.status == "ok"]
    assert got == pytest.approx(expect.tolist(), abs=1e-5)
    assert got[0] > got[2] and got[1] > got[2]  # matched pairs beat a mismatched caption
    # The results form a valid submission body.
    schemas.SubmissionIn(idempotency_key="k-12345678", model_fingerprint=tiny.fingerprint, results=res)


def test_pairs_per_s_counts_only_the_last_minute() -> None:
    st = AgentStats(started_at=0.0)
    st.add_pairs(600, now=10.0)
    assert st.pairs_per_s(now=20.0) == pytest.approx(30.0)  # 600 pairs in the first 20 s
    st.add_pairs(120, now=100.0)
    assert st.pairs_per_s(now=110.0) == pytest.approx(2.0)  # the 600 fell out of the window
    assert st.pairs_scored == 720
    st.error("boom")
    assert st.last_error == "boom"


# ---- the CLI process: Ctrl-C / SIGTERM hand the lease back and exit 0 ----------------------------


def agent_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlcurate.cli.main", "agent", "run", "--server", url, "--quiet", *extra]


# ---- against the real coordinator (`vlcurate serve` in a subprocess, SQLite) --------------------

_LOADED: dict[tuple[str, str, str], Any] = {}
_LOAD_LOCK = threading.Lock()


class SlowScorer:
    """The real scorer, slowed down so that a test can act while the agent is mid-run."""

    def __init__(self, inner: Any, delay: float) -> None:
        self.inner = inner
        self.delay = delay
        self.preprocessing = inner.preprocessing

    @property
    def fingerprint(self) -> str:
        return str(self.inner.fingerprint)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def encode_images(self, images: np.ndarray) -> Any:
        time.sleep(self.delay)
        return self.inner.encode_images(images)


def slow_loader(delay: float) -> Callable[[str, str, str], Any]:
    from vlcurate.models.loader import load_scorer

    def load(name: str, device: str, precision: str) -> Any:
        with _LOAD_LOCK:
            key = (name, device, precision)
            if key not in _LOADED:
                _LOADED[key] = load_scorer(name, device=device, precision=precision)  # type: ignore[arg-type]
        return SlowScorer(_LOADED[key], delay)

    return load


def real_runner(url: str, token: str, loader: Callable[[str, str, str], Any], **config: Any) -> AgentRunner:
    cfg = AgentConfig(server=url, token=token, idle_sleep=0.2, idle_sleep_max=1.0, quiet=True, **config)
    return AgentRunner(cfg, scorer_loader=loader)


def test_two_agents_survive_a_server_restart_verify_everything_and_match_score(
    small_pool: Path, tmp_path: Path
) -> None:
    import httpx
    import pyarrow.parquet as pq
    from tests.platform_live import ServerProcess, setup_task

    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    server = ServerProcess(str(tmp_path / "platform.db"), log=tmp_path / "server.log").start()
    try:
        task, tokens = setup_task(server.url, str(small_pool), unit_size=50, lease_seconds=60)
        assert task["n_units"] == 6
        runners = [real_runner(server.url, t, slow_loader(0.4), max_units=6, max_idle_s=60) for t in tokens]
        summaries: list[Any] = [None, None]
        failures: list[BaseException] = []

        def work(k: int) -> None:
            try:
                summaries[k] = runners[k].run()
            except BaseException as exc:
                failures.append(exc)

        threads = [threading.Thread(target=work, args=(k,), daemon=True) for k in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 300
        # Crash the server while both agents are mid-unit (scoring): their submissions then meet a dead
        # server. (Not while a lease request is in flight: a lease the server commits but never
        # answers is orphaned until it expires, and this contributor may not retake that unit.)
        while time.monotonic() < deadline and not failures:
            mid_unit = all(r.stats.state.startswith("scoring") for r in runners)
            if mid_unit and sum(r.stats.units_done for r in runners) >= 2:
                break
            time.sleep(0.01)
        assert not failures and all(t.is_alive() for t in threads), "agents finished before the restart"
        server.kill()  # a crash, mid-run: leases, downloads or submissions in flight fail
        time.sleep(20.0)  # down for 20 s: the agents must ride it out, not die
        server.start()
        for t in threads:
            t.join(300)
        assert not failures, failures
        errors = " ".join(m for r in runners for _, m in r.stats.errors)
        assert [s.reason for s in summaries] == ["max_units", "max_units"], errors
        assert [r.stats.units_done for r in runners] == [6, 6], errors
        assert "retrying" in errors  # the outage was seen and ridden out

        stats = httpx.get(f"{server.url}/api/v1/stats", timeout=30).json()
        ds = stats["datasets"][0]
        assert ds["units_by_state"].get("verified") == 6, ds
        for tok in tokens:
            me = httpx.get(f"{server.url}/api/v1/me", headers={"Authorization": f"Bearer {tok}"}, timeout=30)
            body = me.json()
            assert body["points"] > 0 and body["valid_results"] == 6 and not body["paused"], body

        feed = httpx.get(f"{server.url}/api/v1/feed", params={"limit": 500}, timeout=30).json()
        assert len(feed) > 200  # verified pairs are public (hidden checks are not)
    finally:
        server.stop()
    # What the agents submitted, as the coordinator verified and exports it, is what `vlcurate score`
    # gives for the same pairs.
    from vlcurate.server.db import make_engine
    from vlcurate.server.export import export_task

    engine = make_engine(str(tmp_path / "platform.db"))
    try:
        summary = export_task(engine, "t", tmp_path / "verified")
    finally:
        engine.dispose()
    assert summary["pairs"] == 300
    scored = tmp_path / "scored"
    score_dataset(str(small_pool), scored, ScoreConfig(model="tiny-synth", progress=False, workers=0))

    def table(run: Path) -> dict[str, Any]:
        return {
            r["uid"]: r
            for f in sorted((run / "scores").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()
        }

    ours, ref = table(tmp_path / "verified"), table(scored)
    assert ours.keys() == ref.keys()
    assert {u: r["status"] for u, r in ours.items()} == {u: r["status"] for u, r in ref.items()}
    diff = np.array([abs(ours[u]["score"] - r["score"]) for u, r in ref.items() if r["score"] is not None])
    assert len(diff) > 250 and diff.max() < 0.02
    assert all(ours[e["uid"]]["score"] == pytest.approx(e["score"], abs=1e-6) for e in feed)


def test_cli_ctrl_c_hands_the_lease_back_to_the_real_server(small_pool: Path, tmp_path: Path) -> None:
    import httpx
    from tests.platform_live import ServerProcess, setup_task

    with ServerProcess(str(tmp_path / "platform.db"), log=tmp_path / "server.log") as server:
        # One unit and quorum 1: while contrib-0 holds it nobody else can lease it, so a 200 for
        # contrib-1 right after Ctrl-C proves the lease was handed back (it would expire in 300 s).
        task, tokens = setup_task(server.url, str(small_pool), unit_size=300, quorum=1, lease_seconds=300)
        assert task["n_units"] == 1
        carol = register_cli(server.url, "carol")
        env = os.environ | {"VLCURATE_TOKEN": tokens[0]}
        proc = subprocess.Popen(
            agent_cmd(server.url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        lines: list[str] = []
        holding = threading.Event()

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                lines.append(line)
                if "loading model" in line:
                    holding.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            assert holding.wait(300), "".join(lines)
            h1 = {"Authorization": f"Bearer {carol}"}
            assert httpx.post(f"{server.url}/api/v1/leases", headers=h1, timeout=30).status_code == 204
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
        reader.join(10)
        assert proc.returncode == 0, "".join(lines)
        assert any("handed back" in line for line in lines), "".join(lines)
        r = httpx.post(f"{server.url}/api/v1/leases", headers=h1, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["unit_id"] == 1


def test_a_handled_ctrl_c_inside_exec_d_code_still_exits_0() -> None:
    """The cause of a rare -2 in the test above: Ctrl-C landed while torch's import ran a
    dataclass's generated `__init__` source through `exec`. CPython then exits by SIGINT although
    the agent handled the interrupt; `forget_handled_interrupt` clears that, so the exit is 0."""
    handled = "try:\n    exec('raise KeyboardInterrupt')\nexcept KeyboardInterrupt:\n    pass\n"
    # Imported first: importing runs generated code too, which would clear the flag by itself.
    helper = "from vlcurate.cli.agent_cmd import forget_handled_interrupt\n"
    fixed = subprocess.run(
        [sys.executable, "-c", helper + handled + "forget_handled_interrupt()\n"], timeout=60
    )
    assert fixed.returncode == 0
    if sys.version_info[:2] == (3, 11):  # the interpreter CI runs: the helper is needed there
        assert subprocess.run([sys.executable, "-c", handled], timeout=60).returncode == -signal.SIGINT


def register_cli(url: str, contributor: str) -> str:
    """`vlcurate agent register` in-process; returns the printed token."""
    from tests.platform_live import ADMIN
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    bad = CliRunner().invoke(
        app, ["agent", "register", "--server", url, "--contributor", contributor, "--admin-token", "wrong"]
    )
    assert bad.exit_code == 2 and "error:" in bad.output and "Traceback" not in bad.output, bad.output
    r = CliRunner().invoke(
        app,
        ["agent", "register", "--server", url, "--contributor", contributor, "--name", "laptop"],
        env={"VLCURATE_ADMIN_TOKEN": ADMIN},
    )
    assert r.exit_code == 0, r.output
    assert f"contributor {contributor!r}" in r.output
    return r.output.strip().splitlines()[-1]


def test_cli_bad_options_are_one_line_errors() -> None:
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    r = CliRunner().invoke(app, ["agent", "run", "--server", "localhost:1", "--token", "t"])
    assert r.exit_code == 2 and "server" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(
        app, ["agent", "run", "--server", "http://127.0.0.1:9", "--token", "t", "--precision", "fp8"]
    )
    assert r.exit_code == 2 and "precision" in r.output
