"""`vlcurate build --platform`: labels verified by contributors' agents on a real platform (uvicorn on
loopback, SQLite then PostgreSQL), with hidden checks, quorum, reputation and the ledger, and a
colluding pair answering junk that must not be paid."""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import func, select
from tests.builder.conftest import ALL_SHAPES, labelled_scenes, scene_of, true_class, write_scene_pool
from tests.platform_live import ADMIN, InThreadServer, admin_headers

from vlcurate.agents.client import PlatformClient
from vlcurate.agents.labeller import Answer, LabelAgent, zero_shot
from vlcurate.builder.calibrate import label_correct
from vlcurate.builder.crowd import CrowdConfig
from vlcurate.builder.formats import Ann, Dataset, read_dataset, write_dataset
from vlcurate.builder.job import BuildConfig, build
from vlcurate.builder.label import Label
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


@pytest.mark.parametrize("adopt", [False, True], ids=["review", "adopt"])
@pytest.mark.parametrize("platform_db", ["sqlite"], indirect=True)  # PG: tests/server/test_label_tasks.py
def test_the_crowd_verifies_labels_and_junk_is_never_paid(
    platform_db: str, adopt: bool, tmp_path: Path
) -> None:
    """A colluding pair agreeing on junk is graded on the hidden checks, paused and never paid; with
    `adopt` (the crowd's class replaces the model's), its junk is never adopted either."""
    from vlcurate.models.loader import load_scorer

    pool = write_scene_pool(tmp_path / "pool", 60, single=True)
    # expanding a labelled set: its labels go out as extra hidden checks (source `dataset`)
    items = labelled_scenes(5000, 12)
    existing = tmp_path / "existing"
    write_dataset(Dataset(list(SHAPES), items), "imagefolder", existing)
    honest = _shared(zero_shot(load_scorer("tiny-synth", device="cpu")))

    with InThreadServer(platform_db, sweep_seconds=0.2) as server:
        agents = _crowd_agents(server.url, honest)
        out = tmp_path / "out"
        messages: list[str] = []
        with _running(agents) as results:
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
                        adopt=adopt,
                    ),
                ),
                progress=lambda s, m: messages.append(f"{s}: {m}"),
            )
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
        # the junk (another class than the model's, agreed by the pair) never became a label
        corrected = [
            r
            for r in _jsonl(out / "review" / "candidates.jsonl")
            if r["labels"] and r["labels"][0].get("corrected_from")
        ]
        assert plat["adopted"] == 0 and corrected == []
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
    assert r.exit_code == 2 and f"platform {nobody} unreachable" in r.output  # detect checked the same way
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


@contextlib.contextmanager
def _running(agents: dict[str, LabelAgent]) -> Iterator[dict[str, Any]]:
    """The agents answering in threads while the block runs (stopped and joined after it, also when
    it fails); each agent's result under its name once the block is left."""
    results: dict[str, Any] = {}
    threads = [
        threading.Thread(target=lambda n=n, a=a: results.__setitem__(n, a.run()), daemon=True)
        for n, a in agents.items()
    ]
    for t in threads:
        t.start()
    try:
        yield results
    finally:
        for a in agents.values():
            a.stop()
        for t in threads:
            t.join(30)


def _crowd_agents(url: str, honest: Answer) -> dict[str, LabelAgent]:
    """Two honest agents and a colluding pair that agrees with itself on junk (3 units each)."""

    def junk(images: list[bytes | None], classes: list[Any]) -> list[int | None]:
        return [None if k is None else (k + 1) % len(classes) for k in honest(images, classes)]

    agents = {}
    for name, answer, units in (
        ("mallory-a", junk, 3),
        ("mallory-b", junk, 3),
        ("alice", honest, None),
        ("bob", honest, None),
    ):
        client = PlatformClient(url, _token(url, name))
        agents[name] = LabelAgent(
            client, answer, model="tiny-synth", max_units=units, idle_polls=300, poll_seconds=0.2
        )
    return agents


@pytest.mark.parametrize("task", ["detect", "segment"])
@pytest.mark.parametrize("platform_db", ["sqlite"], indirect=True)
def test_the_crowd_verifies_every_box_of_a_detect_build(platform_db: str, task: str, tmp_path: Path) -> None:
    """A detect build (and a segment one, with masks): each box goes out as a crop with a "none
    of these" class, and the crowd's verdict decides it. Stars and crosses are in the pool but not
    in the request (nor named as `other`), so the builder calls some of them circles; boxes the
    crowd verifies as another class or none wait for review, and their masks with them."""
    from vlcurate.models.loader import load_scorer

    words = {"detect": "detection", "segment": "segmentation"}
    pool = write_scene_pool(tmp_path / "pool", 14, single=False)
    items = labelled_scenes(5000, 6)  # an expanded detect set: its boxes become hidden checks
    existing = tmp_path / "existing"
    write_dataset(Dataset(list(SHAPES), items), "coco", existing)
    honest = _shared(zero_shot(load_scorer("tiny-synth", device="cpu")))
    with InThreadServer(platform_db, sweep_seconds=0.2) as server:
        agents = _crowd_agents(server.url, honest)
        out = tmp_path / "out"
        messages: list[str] = []
        with _running(agents) as results:
            summary = build(
                BuildConfig(
                    request=f"circles, squares and triangles, 30 each, for {words[task]}",
                    expand=existing,
                    pools=[str(pool)],
                    out=out,
                    platform=CrowdConfig(url=server.url, token=ADMIN, timeout_s=60, poll_s=0.1, unit_size=8),
                ),
                progress=lambda s, m: messages.append(f"{s}: {m}"),
            )
        plat = summary["metrics"]["platform"]
        assert summary["spec"]["task"] == task and not plat["timed_out"], messages
        assert plat["units_verified"] == plat["units"] > 1, messages
        assert any("box crops" in m and "hidden checks" in m for m in messages), messages
        verdicts = {}
        for task_id in plat["task_ids"]:
            got = httpx.get(f"{server.url}/api/v1/label-tasks/{task_id}/labels", headers=admin_headers())
            assert got.status_code == 200
            verdicts |= {v["uid"]: v for v in got.json()["labels"]}
        with server.engine.connect() as conn:
            C, L = db.contributors, db.ledger
            rows = {
                r.name: r
                for r in conn.execute(
                    select(C.c.name, C.c.paused, func.coalesce(func.sum(L.c.points), 0.0).label("pts"))
                    .outerjoin(L, L.c.contributor_id == C.c.id)
                    .group_by(C.c.id, C.c.name, C.c.paused)
                ).all()
            }
            assert audit(conn) == []
            specs = conn.execute(select(db.tasks.c.label_spec).where(db.tasks.c.id.in_(plat["task_ids"])))
            assert {tuple(c["name"] for c in ls["classes"]) for (ls,) in specs} == {
                ("circle", "square", "triangle", "none of these")
            }
    none = 3  # the spec's three classes, then "none of these"
    # plain background crops went out as checks whose trusted answer is "none"; the crowd agrees
    backgrounds = [v for u, v in verdicts.items() if u.startswith("g")]
    assert backgrounds and all(v["check"] and v["label"] == none for v in backgrounds), backgrounds
    assert any(u.startswith("d") and v["check"] for u, v in verdicts.items())  # the expanded set's boxes
    # every box the builder made, in order, against the crowd's verdict on its crop
    cands = _jsonl(out / "review" / "candidates.jsonl")
    boxes = [(r, lab) for r in cands for lab in r["labels"]]
    classes = summary["spec"]["classes"]
    names = [c["name"] for c in classes]
    rejected = 0
    for k, (r, lab) in enumerate(boxes):
        v = verdicts[f"b{k}"]
        assert v["state"] in ("verified", "disputed")
        if v["state"] != "verified":
            continue
        assert lab["verifier"].startswith("platform:")
        agree = v["label"] == names.index(lab["class"])
        assert lab["verified"] is agree
        if not agree:  # another class or none: queued, the image not exported
            rejected += 1
            assert not r["exported"]
    assert rejected > 0  # stars and crosses called circles were caught
    queue = _jsonl(out / "review" / "queue.jsonl")
    assert len(queue) >= rejected
    exported = _jsonl(out / "labels.jsonl")
    truth = {
        r["source"]: [Ann(SHAPES[o.label], o.bbox) for o in scene_of(r["source"], False).objects]
        for r in cands
    }
    right = [  # each box of the builder against the scene's truth, and whether the crowd confirmed it
        (label_correct(Label(x["class"], 1.0, "t", box=tuple(x["box"])), truth[r["source"]]), x["verified"])
        for r, x in boxes
    ]
    # what the crowd rejected was wrong (a star or cross called a circle, a cross called a triangle);
    # what it confirmed is better than what the builder proposed (the crowd's model is the builder's)
    assert np.mean([not ok for ok, confirmed in right if confirmed is False]) >= 0.9, right
    assert np.mean([ok for ok, c in right if c]) > np.mean([ok for ok, _ in right]), right
    # a mask follows its box, exported with it (COCO RLE) only when the crowd confirmed it
    coco = read_dataset(out / "coco")
    assert sum(len(it.anns) for it in coco.items) == sum(len(r["labels"]) for r in exported)
    if task == "segment":
        assert all(a.mask is not None and a.mask.any() for it in coco.items for a in it.anns)
    assert exported and all(
        lab["verified"] and lab["verifier"].startswith("platform:") for r in exported for lab in r["labels"]
    )
    # ALR from verified agreement over the boxes
    alr = summary["metrics"]["alr"]
    assert alr["source"] == "platform" and alr["checked"] == sum(
        1 for k in range(len(boxes)) if verdicts[f"b{k}"]["state"] == "verified"
    )
    assert alr["confirmed"] == alr["checked"] - rejected and "local" in alr
    # the junk pair: failed the checks, paused, never paid
    for bad in ("mallory-a", "mallory-b"):
        assert rows[bad].pts == 0.0 and rows[bad].paused, rows[bad]
        assert results[bad].states.get("valid", 0) == 0 and results[bad].points == 0.0
    assert rows["alice"].pts + rows["bob"].pts > 0 and not rows["alice"].paused and not rows["bob"].paused


def test_background_checks_come_only_from_plain_windows_that_touch_no_box() -> None:
    from vlcurate.builder.crowd import PLAIN_STD, background_box

    a = np.full((64, 64, 3), 110, np.uint8)
    a[0:20, 0:20] = (215, 35, 35)  # an object in the top left
    win = background_box(a, [(0, 0, 20, 20)])
    assert win is not None and (win[0] >= 20 or win[1] >= 20)  # outside the box
    x0, y0, x1, y1 = win
    assert a[y0:y1, x0:x1].reshape(-1, 3).std(axis=0).max() < PLAIN_STD
    noisy = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    assert background_box(noisy, [(0, 0, 10, 10)]) is None  # a busy photo gives no "none" check


@pytest.mark.parametrize("platform_db", ["sqlite"], indirect=True)
def test_adopted_crowd_labels_correct_the_model(platform_db: str, tmp_path: Path) -> None:
    """People who know the answer (agents that look the truth up) label a build whose model makes a
    few mistakes: with `adopt`, a label the crowd verified as another class takes the crowd's class,
    keeps the model's as `corrected_from`, and is exported instead of waiting for review."""
    pool = write_scene_pool(tmp_path / "pool", 120, single=True)
    truth = {p.read_bytes(): true_class(str(p), True) for p in pool.iterdir()}

    def oracle(images: list[bytes | None], classes: list[Any]) -> list[int | None]:
        names = [c.name for c in classes]
        return [None if b is None or b not in truth else names.index(truth[b]) for b in images]

    with InThreadServer(platform_db, sweep_seconds=0.2) as server:
        agents = {
            name: LabelAgent(
                PlatformClient(server.url, _token(server.url, name)),
                oracle,
                model="oracle",
                idle_polls=300,
                poll_seconds=0.3,
            )
            for name in ("ann", "ben")
        }
        out = tmp_path / "out"
        with _running(agents):
            summary = build(
                BuildConfig(
                    request=f"{ALL_SHAPES}, 12 each",
                    pools=[str(pool)],
                    out=out,
                    platform=CrowdConfig(
                        url=server.url, token=ADMIN, timeout_s=90, poll_s=0.1, unit_size=8, adopt=True
                    ),
                )
            )
    plat = summary["metrics"]["platform"]
    assert not plat["timed_out"] and plat["units_verified"] == plat["units"]
    cands = _jsonl(out / "review" / "candidates.jsonl")
    corrected = [r for r in cands if r["labels"] and r["labels"][0].get("corrected_from")]
    assert len(corrected) == plat["adopted"] > 0
    for r in corrected:
        lab = r["labels"][0]
        assert lab["class"] == true_class(r["source"], True) != lab["corrected_from"]
        assert (
            lab["verified"]
            and lab["model"].startswith("platform:")
            and lab["verifier"].startswith("platform:")
        )
    exported = {r["uid"]: r for r in _jsonl(out / "labels.jsonl")}
    assert any(r["uid"] in exported for r in corrected)  # exported, not held for review
    queued = {q["uid"] for q in _jsonl(out / "review" / "queue.jsonl")}
    assert not queued & {r["uid"] for r in corrected}
    right = [r["labels"][0]["class"] == true_class(r["source"], True) for r in exported.values()]
    assert np.mean(right) >= 0.97
    card = (out / "README.md").read_text()
    assert "labels the crowd corrected (its verified class taken; the model's kept as" in card
    assert f"`corrected_from` in `labels.jsonl`): {plat['adopted']}" in card
    # the ALR still measures the model: the crowd's agreement with the labels the model made
    assert summary["metrics"]["alr"]["confirmed"] < summary["metrics"]["alr"]["checked"]
