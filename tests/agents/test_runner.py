"""AgentRunner: item results, the lease loop, heartbeats, model pinning and clean shutdown.

Unit tests run the runner against the scripted HTTP server of test_client (a fake coordinator
that serves leases, images and records submissions); the model is either the bundled tiny-synth
(real decode and scoring) or a trivial fake scorer where only the loop's behaviour matters.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.agents.test_client import ME, Reply, ScriptedServer, Seen

from vlcurate import __version__
from vlcurate.agents.client import PausedError, PlatformClient, RetryPolicy
from vlcurate.agents.console import render
from vlcurate.agents.runner import (
    AgentConfig,
    AgentRunner,
    AgentStats,
    Fetched,
    ModelMismatchError,
    build_results,
)
from vlcurate.pipeline.decode import decode_image
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
            from vlcurate.models.clip import load_scorer

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


def lease_dict(
    lease_id: int, items: list[tuple[str, str | None]], fp: str, heartbeat: int = 30
) -> dict[str, Any]:
    return {
        "lease_id": lease_id,
        "unit_id": 100 + lease_id,
        "task": {
            "id": 1,
            "kind": "dva-score",
            "model": "tiny-synth",
            "model_fingerprint": fp,
            "preprocessing": {},
        },
        "deadline": "2099-01-01T00:00:00Z",
        "heartbeat_seconds": heartbeat,
        "items": [
            {"item_id": iid, "caption": cap, "image_url": f"/api/v1/leases/{lease_id}/images/{iid}"}
            for iid, cap in items
        ],
    }


class FakePlatform:
    """A coordinator in miniature: queued leases, then 204; images by item id; records submissions."""

    def __init__(
        self,
        leases: list[dict[str, Any]],
        images: dict[str, bytes],
        me: dict[str, Any] | None = None,
        submit_status: int = 200,
        image_delay: float = 0.0,
    ) -> None:
        self.leases = deque(leases)
        self.images = images
        self.me = me or ME
        self.submit_status = submit_status
        self.image_delay = image_delay
        self.submissions: list[tuple[int, dict[str, Any]]] = []
        self.released: list[int] = []
        self.heartbeats: list[int] = []
        self.image_requests = threading.Event()
        self.server = ScriptedServer(self.route)
        self.url = self.server.url

    def route(self, s: Seen) -> Reply:
        parts = s.path.strip("/").split("/")  # api v1 ...
        if s.path == "/api/v1/me":
            return Reply(200, self.me)
        if s.path == "/api/v1/leases" and s.method == "POST":
            return Reply(200, self.leases.popleft()) if self.leases else Reply(204)
        lease_id = int(parts[3])
        if s.method == "DELETE":
            self.released.append(lease_id)
            return Reply(204)
        if parts[4] == "heartbeat":
            self.heartbeats.append(lease_id)
            return Reply(200, {"lease_id": lease_id, "deadline": "2099-01-01T00:00:00Z"})
        if parts[4] == "images":
            self.image_requests.set()
            data = self.images.get(parts[5])
            return (
                Reply(404, {"detail": "no such item"})
                if data is None
                else Reply(200, data, delay=self.image_delay)
            )
        if parts[4] == "submit":
            body = json.loads(s.body)
            self.submissions.append((lease_id, body))
            if self.submit_status != 200:
                return Reply(self.submit_status, {"detail": "lease expired"})
            n_ok = sum(r["status"] == "ok" for r in body["results"])
            out = {
                "submission_id": len(self.submissions),
                "lease_id": lease_id,
                "unit_id": 100 + lease_id,
                "state": "valid",
                "detail": "agreed",
                "points_credited": float(n_ok),
            }
            return Reply(200, out)
        return Reply(404, {"detail": "not found"})

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture
def platforms() -> Iterator[Callable[..., FakePlatform]]:
    made: list[FakePlatform] = []

    def make(*args: Any, **kwargs: Any) -> FakePlatform:
        p = FakePlatform(*args, **kwargs)
        made.append(p)
        return p

    yield make
    for p in made:
        p.stop()


def runner_for(
    url: str, loader: Callable[[str, str, str], Any], **config: Any
) -> tuple[AgentRunner, list[tuple[str, str, str]]]:
    loads: list[tuple[str, str, str]] = []

    def load(name: str, device: str, precision: str) -> Any:
        loads.append((name, device, precision))
        return loader(name, device, precision)

    cfg = AgentConfig(server=url, token="tok", idle_sleep=0.05, idle_sleep_max=0.1, max_idle_s=0.3, **config)
    client = PlatformClient(url, "tok", retry=RetryPolicy(base=0.05, cap=0.2, max_elapsed=5.0))
    return AgentRunner(cfg, client=client, scorer_loader=load), loads


def scene_jpg(i: int) -> tuple[bytes, str]:
    s = scene_from_seed(7, i)
    return s.encode("jpg"), s.caption_text


def pixels(data: bytes, size: int) -> np.ndarray:
    d = decode_image(data, size)
    assert d.array is not None
    return d.array


@pytest.fixture(scope="module")
def tiny() -> Any:
    from vlcurate.models.clip import load_scorer

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


# ---- the loop against a fake coordinator ------------------------------------------------------


def test_runner_scores_a_unit_with_tiny_synth_and_submits(
    platforms: Callable[..., FakePlatform], tiny: Any
) -> None:
    (img0, cap0), (img1, cap1) = scene_jpg(3), scene_jpg(4)
    items = [("a", cap0), ("b", "a green star"), ("c", None), ("d", cap1), ("e", "x")]
    images = {"a": img0, "b": CORRUPT, "c": img0, "d": img1}  # "e" -> 404
    p = platforms([lease_dict(1, items, tiny.fingerprint)], images)
    runner, loads = runner_for(p.url, lambda *a: tiny)
    summary = runner.run()
    assert summary.reason == "idle" and summary.units_done == 1 and summary.pairs_scored == 5
    assert loads == [("tiny-synth", "auto", "auto")]
    assert len(p.submissions) == 1 and p.released == []
    lease_id, body = p.submissions[0]
    assert lease_id == 1
    assert body["model_fingerprint"] == tiny.fingerprint and body["agent_version"] == __version__
    by_id = {r["item_id"]: r for r in body["results"]}
    assert {k: v["status"] for k, v in by_id.items()} == {
        "a": "ok",
        "b": "decode_error",
        "c": "missing_text",
        "d": "ok",
        "e": "fetch_error",
    }
    size = tiny.preprocessing.image_size
    want = tiny.score(np.stack([pixels(img0, size), pixels(img1, size)]), [cap0, cap1])
    assert [by_id["a"]["score"], by_id["d"]["score"]] == pytest.approx(want.tolist(), abs=1e-5)
    assert runner.stats.points_credited == 2.0 and runner.stats.submissions == {"valid": 1}
    assert runner.stats.me is not None and runner.stats.me.contributor == "alice"
    assert "fetch_error" not in (runner.stats.last_error or "") and "not fetched" in (
        runner.stats.last_error or ""
    )


def test_runner_stops_after_max_units_and_caches_the_model(platforms: Callable[..., FakePlatform]) -> None:
    img, cap = scene_jpg(5)
    leases = [lease_dict(i, [(f"i{i}", cap)], "fake-fp") for i in range(1, 5)]
    p = platforms(leases, {f"i{i}": img for i in range(1, 5)})
    runner, loads = runner_for(p.url, lambda *a: FakeScorer(), max_units=3)
    summary = runner.run()
    assert summary.reason == "max_units" and summary.units_done == 3
    assert [lid for lid, _ in p.submissions] == [1, 2, 3]
    assert len(loads) == 1
    keys = {b["idempotency_key"] for _, b in p.submissions}
    assert len(keys) == 3  # a fresh key per unit


def test_fingerprint_mismatch_releases_the_lease_and_stops(platforms: Callable[..., FakePlatform]) -> None:
    img, cap = scene_jpg(6)
    p = platforms([lease_dict(1, [("a", cap)], "the-pinned-fp")], {"a": img})
    runner, loads = runner_for(p.url, lambda *a: FakeScorer("other-fp"))
    with pytest.raises(ModelMismatchError, match="pins model 'tiny-synth'"):
        runner.run()
    assert p.released == [1] and p.submissions == []
    assert [precision for _, _, precision in loads] == ["auto"]  # fingerprints do not depend on precision


def test_paused_contributor_stops_before_leasing(platforms: Callable[..., FakePlatform]) -> None:
    p = platforms([], {}, me=ME | {"paused": True, "pause_reason": "failed hidden checks"})
    runner, _ = runner_for(p.url, lambda *a: FakeScorer())
    with pytest.raises(PausedError) as ei:
        runner.run()
    assert ei.value.reason == "failed hidden checks"
    assert p.server.paths("POST") == []


def test_heartbeats_while_working_and_ctrl_c_releases(platforms: Callable[..., FakePlatform]) -> None:
    img, cap = scene_jpg(8)
    p = platforms([lease_dict(1, [("a", cap)], "fake-fp", heartbeat=1)], {"a": img})

    def slow_then_interrupt() -> None:
        time.sleep(2.5)  # long enough for two heartbeats
        raise KeyboardInterrupt

    runner, _ = runner_for(p.url, lambda *a: FakeScorer(on_score=slow_then_interrupt))
    summary = runner.run()
    assert summary.reason == "interrupted" and summary.units_done == 0
    assert len(p.heartbeats) >= 2 and set(p.heartbeats) == {1}
    assert p.released == [1] and p.submissions == []


def test_rejected_submission_drops_the_unit_and_goes_on(platforms: Callable[..., FakePlatform]) -> None:
    img, cap = scene_jpg(9)
    leases = [lease_dict(1, [("a", cap)], "fake-fp"), lease_dict(2, [("a", cap)], "fake-fp")]
    p = platforms(leases, {"a": img}, submit_status=409)
    runner, _ = runner_for(p.url, lambda *a: FakeScorer())
    summary = runner.run()
    assert summary.reason == "idle" and summary.units_done == 0
    assert runner.stats.units_dropped == 2 and "lease expired" in (runner.stats.last_error or "")
    assert len(p.submissions) == 2


def test_console_renders_every_state(platforms: Callable[..., FakePlatform], tiny: Any) -> None:
    from rich.console import Console

    st = AgentStats()
    con = Console(width=120, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    con.print(render(st, "http://x"))
    img, cap = scene_jpg(10)
    p = platforms([lease_dict(1, [("a", cap), ("b", None)], tiny.fingerprint)], {"a": img, "b": img})
    runner, _ = runner_for(p.url, lambda *a: tiny)
    runner.run()
    runner.stats.error("HTTP 503: restarting")
    con.print(render(runner.stats, p.url))
    text = con.export_text()
    assert cap[:40] in text and "pairs/s" in text and "alice" in text and "restarting" in text
    assert "reputation" in text and "missing_text" in text


# ---- the CLI process: Ctrl-C / SIGTERM hand the lease back and exit 0 ----------------------------


def agent_cmd(url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "vlcurate.cli.main", "agent", "run", "--server", url, "--quiet", *extra]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_cli_signal_releases_lease_and_exits_zero(
    platforms: Callable[..., FakePlatform], tiny: Any, sig: signal.Signals
) -> None:
    img, cap = scene_jpg(11)
    p = platforms([lease_dict(1, [("a", cap)], tiny.fingerprint)], {"a": img}, image_delay=60.0)
    env = os.environ | {"VLCURATE_TOKEN": "tok"}
    proc = subprocess.Popen(
        agent_cmd(p.url), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert p.image_requests.wait(300), "the agent never fetched an image"
        time.sleep(0.3)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert p.released == [1] and p.submissions == []
    assert "handed back" in err


def test_cli_paused_exits_nonzero_with_reason(platforms: Callable[..., FakePlatform]) -> None:
    p = platforms([], {}, me=ME | {"paused": True, "pause_reason": "copied answers"})
    env = os.environ | {"VLCURATE_TOKEN": "tok"}
    r = subprocess.run(agent_cmd(p.url), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 3
    assert "copied answers" in r.stderr


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
    from vlcurate.models.clip import load_scorer

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

    from vlcurate.pipeline.score_config import ScoreConfig
    from vlcurate.pipeline.score_job import score_dataset

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


def test_cli_run_with_live_view_finishes_after_max_units(
    platforms: Callable[..., FakePlatform], tiny: Any
) -> None:
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    img, cap = scene_jpg(12)
    p = platforms([lease_dict(1, [("a", cap), ("b", None)], tiny.fingerprint)], {"a": img, "b": img})
    r = CliRunner().invoke(
        app,
        ["agent", "run", "--server", p.url, "--max-units", "1", "--device", "cpu"],
        env={"VLCURATE_TOKEN": "tok"},
    )
    assert r.exit_code == 0, r.output
    assert "agent stopped (max_units): 1 units, 2 pairs" in r.output
    assert len(p.submissions) == 1


def test_cli_bad_options_are_one_line_errors() -> None:
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    r = CliRunner().invoke(app, ["agent", "run", "--server", "localhost:1", "--token", "t"])
    assert r.exit_code == 2 and "server" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(
        app, ["agent", "run", "--server", "http://127.0.0.1:9", "--token", "t", "--precision", "fp8"]
    )
    assert r.exit_code == 2 and "precision" in r.output
