"""`vlcurate build --platform`: labels verified by contributors' agents on a real platform (uvicorn on
loopback, SQLite then PostgreSQL), with hidden checks, quorum, reputation and the ledger, and a
colluding pair answering junk that must not be paid."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select
from tests.builder.conftest import ALL_SHAPES, scene_of, true_class, write_scene_pool
from tests.platform_live import ADMIN, InThreadServer, admin_headers

from vlcurate.agents.client import PlatformClient
from vlcurate.agents.labeller import Answer, LabelAgent, zero_shot
from vlcurate.builder.crowd import CrowdConfig
from vlcurate.builder.formats import Ann, Dataset, Item, write_dataset
from vlcurate.builder.job import BuildConfig, build
from vlcurate.server import db
from vlcurate.server.ledger import audit
from vlcurate.synth.vocab import SHAPES


def _token(url: str, name: str) -> str:
    r = httpx.post(f"{url}/api/v1/agents", json={"contributor": name}, headers=admin_headers(), timeout=30)
    r.raise_for_status()
    return str(r.json()["token"])


def _shared(answer: Answer) -> Answer:
    lock = threading.Lock()  # one model for every agent thread here; each call holds it

    def call(images: list[bytes | None], classes: list[Any]) -> list[int | None]:
        with lock:
            return answer(images, classes)

    return call


@pytest.mark.parametrize("platform_db", ["sqlite"], indirect=True)  # PG: tests/server/test_label_tasks.py
def test_the_crowd_verifies_labels_and_junk_is_never_paid(platform_db: str, tmp_path: Path) -> None:
    from vlcurate.models.loader import load_scorer

    pool = write_scene_pool(tmp_path / "pool", 60, single=True)
    # expanding a labelled set: its labels go out as extra hidden checks (source `dataset`)
    items = []
    for i in range(5000, 5012):
        s = scene_of(f"{i}", True)
        ann = [Ann(SHAPES[s.objects[0].label], s.objects[0].bbox)]
        items.append(Item(f"{i}.png", "train", 64, 64, ann, s.encode("png")))
    existing = tmp_path / "existing"
    write_dataset(Dataset(list(SHAPES), items), "imagefolder", existing)
    honest = _shared(zero_shot(load_scorer("tiny-synth", device="cpu")))

    def junk(images: list[bytes | None], classes: list[Any]) -> list[int | None]:
        # the pair agrees with itself on labels that are always wrong where the model is right
        return [None if k is None else (k + 1) % len(classes) for k in honest(images, classes)]

    with InThreadServer(platform_db, sweep_seconds=0.2) as server:
        agents: dict[str, LabelAgent] = {}
        for name, answer, units in (
            ("mallory-a", junk, 3),
            ("mallory-b", junk, 3),
            ("alice", honest, None),
            ("bob", honest, None),
        ):
            client = PlatformClient(server.url, _token(server.url, name))
            agents[name] = LabelAgent(
                client, answer, model="tiny-synth", max_units=units, idle_polls=300, poll_seconds=0.3
            )
        results: dict[str, Any] = {}
        threads = [
            threading.Thread(target=lambda n=n, a=a: results.__setitem__(n, a.run()), daemon=True)
            for n, a in agents.items()
        ]
        for t in threads:
            t.start()
        out = tmp_path / "out"
        messages: list[str] = []
        try:
            summary = build(
                BuildConfig(
                    request=f"{ALL_SHAPES}, 6 each",
                    expand=existing,
                    pools=[str(pool)],
                    out=out,
                    platform=CrowdConfig(
                        url=server.url,
                        token=ADMIN,
                        timeout_s=90,
                        poll_s=0.1,
                        unit_size=8,
                        max_request_bytes=12_000,  # several tasks, as a large build needs
                    ),
                ),
                progress=lambda s, m: messages.append(f"{s}: {m}"),
            )
        finally:
            for a in agents.values():
                a.stop()
            for t in threads:
                t.join(30)
        plat = summary["metrics"]["platform"]
        assert not plat["timed_out"] and plat["units_verified"] == plat["units"] > 1, messages
        assert any("units verified" in m for m in messages)
        # ALR from verified agreement: the builder's labels against the crowd's verified ones
        alr = summary["metrics"]["alr"]
        assert alr["source"] == "platform" and alr["checked"] > 0 and alr["ci95"][0] <= alr["alr"] <= 1
        assert "local" in alr and alr["checked"] == sum(
            1 for r in _jsonl(out / "review" / "candidates.jsonl") if r["labels"]
        )
        exported = _jsonl(out / "labels.jsonl")
        assert exported and all(r["labels"][0]["verifier"].startswith("platform:") for r in exported)
        assert np.mean([r["labels"][0]["class"] == true_class(r["source"], True) for r in exported]) >= 0.9
        assert "crowd's verified labels agree" in (out / "README.md").read_text()
        stages = {s["stage"]: s for s in summary["stages"]}
        extras = min(
            12, alr["checked"] // 4
        )  # the expanded set's images, a quarter of the candidates at most
        assert stages["platform"]["calls"]["platform_items_published"] == alr["checked"] + extras
        # the junk pair: graded on the hidden checks, every submission invalid, paused, never paid
        with server.engine.connect() as conn:
            C, L = db.contributors, db.ledger
            rows = {
                r.name: r
                for r in conn.execute(
                    select(
                        C.c.name,
                        C.c.paused,
                        C.c.gold_fail,
                        func.coalesce(func.sum(L.c.points), 0.0).label("pts"),
                    )
                    .outerjoin(L, L.c.contributor_id == C.c.id)
                    .group_by(C.c.id, C.c.name, C.c.paused, C.c.gold_fail)
                ).all()
            }
            assert audit(conn) == []
        for bad in ("mallory-a", "mallory-b"):
            assert rows[bad].pts == 0.0 and rows[bad].paused and rows[bad].gold_fail >= 2, rows[bad]
            assert results[bad].states.get("valid", 0) == 0 and results[bad].points == 0.0
        assert rows["alice"].pts + rows["bob"].pts > 0 and not rows["alice"].paused and not rows["bob"].paused
        # the verified labels read back, task by task: every published image has one
        assert len(plat["task_ids"]) > 1
        for task_id in plat["task_ids"]:
            got = httpx.get(f"{server.url}/api/v1/label-tasks/{task_id}/labels", headers=admin_headers())
            assert got.status_code == 200 and {v["state"] for v in got.json()["labels"]} <= {
                "verified",
                "disputed",
            }


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x]


def test_platform_bad_input_fails_before_any_labelling(tmp_path: Path) -> None:
    from tests.platform_live import free_port
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    pool = write_scene_pool(tmp_path / "pool", 3, single=True)
    out = tmp_path / "out"
    base = ["build", "circles and squares, 2 each", "--pool", str(pool), "--out", str(out)]
    runner = CliRunner()
    nobody = f"http://127.0.0.1:{free_port()}"
    r = runner.invoke(app, [*base, "--platform", nobody], env={"VLCURATE_ADMIN_TOKEN": ""})
    assert r.exit_code == 2 and "--platform needs the operator token" in r.output
    r = runner.invoke(app, [*base, "--platform", nobody, "--platform-token", "t"])
    assert r.exit_code == 2 and f"platform {nobody} unreachable" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, [*base, "--task", "detect", "--platform", nobody, "--platform-token", "t"])
    assert r.exit_code == 2 and "classification labels only" in r.output
    assert not out.exists()
    # the contributor's side: a token pasted with the register command's preamble
    r = runner.invoke(app, ["agent", "label", "--server", nobody, "--token", "agent 1 token:\nvla_x"])
    assert r.exit_code == 2 and "--token must be the token alone" in r.output


def test_a_build_stopped_while_waiting_resumes_on_the_same_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlcurate.builder import job

    pool = write_scene_pool(tmp_path / "pool", 30, single=True)
    with InThreadServer(str(tmp_path / "platform.db"), sweep_seconds=0.2) as server:
        crowd = CrowdConfig(url=server.url, token=ADMIN, timeout_s=0.3, poll_s=0.1, unit_size=8)
        cfg = BuildConfig(
            request="circles and squares, 3 each", pools=[str(pool)], out=tmp_path / "o", platform=crowd
        )

        def broken(*a: Any, **k: Any) -> Any:
            raise RuntimeError("disk full")

        monkeypatch.setattr(job, "export_all", broken)
        with pytest.raises(RuntimeError, match="disk full"):
            build(cfg)
        monkeypatch.undo()
        published = json.loads((job.work_dir_for(cfg.out) / "platform.json").read_text())["task_ids"]
        # no agent came: the wait times out, the build exports with the local check and says so
        summary = build(cfg)
        plat = summary["metrics"]["platform"]
        assert plat["task_ids"] == published and plat["timed_out"] and plat["units_verified"] == 0
        stages = {s["stage"]: s for s in summary["stages"]}
        assert stages["platform"]["resumed"] and stages["platform"]["calls"]["platform_items_published"] > 0
        tasks = httpx.get(f"{server.url}/api/v1/tasks", timeout=30).json()
        assert [t["id"] for t in tasks if t["kind"] == "label"] == published  # nothing published twice
        alr = summary["metrics"]["alr"]  # nothing verified: the local figure stands, and says why
        assert alr.get("source") != "platform" and alr["checked"] > 0 and "timeout" in alr["why_not_platform"]
