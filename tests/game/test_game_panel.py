"""The optional panel of VLM judges (the bundled offline VLM judges), and judges' own reliability:
the panel is one voice beside the players, its verdicts and disagreements reach the operator and
the export; a judge who cannot tell wrong answers from right ones loses its voice."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from tests.game.conftest import Game, Pools, make_game
from tests.platform_live import ADMIN, free_port
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app as cli
from vlcurate.server import db
from vlcurate.server.game import judging
from vlcurate.server.game.export import export_game
from vlcurate.vlm.prompts import TAINT_INSTRUCTION

COUNT = "How many objects are there?"


def _panel(vlm: VLMServer, *names: str, url: str | None = None) -> list[dict[str, Any]]:
    return [{"name": n, "vlm_url": url or vlm.base_url, "model": "tiny-synth", "timeout_s": 2} for n in names]


def _flag_one(g: Game, c: TestClient) -> tuple[str, int]:
    """Ask the count on the first image and flag the answer with the true count."""
    s = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
    sid, iid = s["session_id"], s["image"]["image_id"]
    q = g.ask(c, sid, iid, COUNT).json()
    truth = g.scene(iid).n_objects
    f = c.post(
        f"/api/v1/game/sessions/{sid}/images/{iid}/flag",
        json={"question_id": q["question_id"], "corrected": str(truth)},
    )
    assert f.status_code == 200, f.text
    return f.json()["flag_id"], truth


def _settled(g: Game, flag_id: str, verdicts: int, timeout: float = 30.0) -> Any:
    """The flag once the background panel stored `verdicts` verdicts on it."""
    F, V = db.game_flags, db.game_model_verdicts
    deadline = time.monotonic() + timeout
    while True:
        with g.engine.connect() as conn:
            row = conn.execute(select(F).where(F.c.public_id == flag_id)).one()
            n = len(conn.execute(select(V.c.id).where(V.c.flag_id == row.id)).all())
        if n >= verdicts or time.monotonic() > deadline:
            assert n == verdicts
            time.sleep(0.2)  # the settle commits with the verdicts
            with g.engine.connect() as conn:
                return conn.execute(select(F).where(F.c.public_id == flag_id)).one()
        time.sleep(0.1)


@pytest.fixture
def wrong_game(tmp_path: Path, pools: Pools, vlm: VLMServer) -> Any:
    """Every image untainted, yet the game's model answers wrongly (its 'honest' instruction is the
    tainting one); two judges see the truth."""
    g = make_game(
        str(tmp_path / "w.db"),
        pools,
        vlm,
        n_tainted=0,
        honest_instruction=TAINT_INSTRUCTION,
        judges_needed=2,
        min_tainted_seen=0,
        vlm_judges=_panel(vlm, "j1", "j2"),
    )
    yield g
    g.engine.dispose()


def test_the_panel_is_one_voice_and_its_disagreements_are_kept(wrong_game: Game, tmp_path: Path) -> None:
    g = wrong_game
    assert [j["name"] for j in g.game["vlm_judges"]] == ["j1", "j2"]
    assert "vlm_url" not in g.game["vlm_judges"][0]
    author = g.guest("author")
    flag_id, truth = _flag_one(g, author)
    row = _settled(g, flag_id, verdicts=2)
    # both judges said "wrong": that is one voice of the two this game needs
    assert (row.state, row.votes_wrong, row.votes_right) == ("pending", 1, 0)
    ops = g.admin.get("/api/v1/game/flags", headers={"Authorization": f"Bearer {ADMIN}"}).json()
    verdicts = ops[0]["vlm_verdicts"]
    assert [v["judge"] for v in verdicts] == ["j1", "j2"]
    assert all(v["own_answer"] == str(truth) and v["model_wrong"] and v["correction_ok"] for v in verdicts)
    # a player says the model was right: the flag waits, the disagreement is kept and shown
    judge = g.guest("judge")
    task = judge.post("/api/v1/game/judgements/next").json()
    assert (
        judge.post(f"/api/v1/game/judgements/{task['task_id']}", json={"model_wrong": False}).status_code
        == 200
    )
    with g.engine.connect() as conn:
        row = conn.execute(select(db.game_flags)).one()
    assert (row.state, row.votes_wrong, row.votes_right, row.disputed) == ("pending", 1, 1, True)
    # a second player agrees with the panel: confirmed, and the export carries the panel's verdicts
    other = g.guest("other")
    task = other.post("/api/v1/game/judgements/next").json()
    other.post(f"/api/v1/game/judgements/{task['task_id']}", json={"model_wrong": True})
    with g.engine.connect() as conn:
        assert conn.execute(select(db.game_flags.c.state)).scalar_one() == "confirmed"
    summary = export_game(g.engine, "g1", tmp_path / "out", eval_fraction=0.0, near_dup_bits=0)
    assert summary["train"] == 1
    record = json.loads((tmp_path / "out" / "llava" / "train.json").read_text())[0]
    panel = record["metadata"]["vlm_judges"] if "metadata" in record else record["vlm_judges"]
    assert [v["model_wrong"] for v in panel] == [True, True]
    # the operator's audit lists the disputed flag with each judge's verdict
    out = CliRunner().invoke(cli, ["game", "audit", "--db", str(g.engine.url.database)])
    assert "disputed flag" in out.output and "VLM judge j1: wrong" in out.output, out.output


def test_an_honest_answer_is_overturned_by_the_panel_and_a_dead_judge_gives_no_voice(
    tmp_path: Path, pools: Pools, vlm: VLMServer
) -> None:
    dead = f"http://127.0.0.1:{free_port()}/v1"
    g = make_game(
        str(tmp_path / "h.db"),
        pools,
        vlm,
        n_tainted=0,
        judges_needed=1,
        vlm_judges=_panel(vlm, "live") + _panel(vlm, "dead", url=dead),
    )
    try:
        flag_id, _ = _flag_one(g, g.guest())  # the model answered honestly: a false alarm
        row = _settled(g, flag_id, verdicts=2)
        assert (row.state, row.votes_wrong, row.votes_right) == ("overturned", 0, 1)
        with g.engine.connect() as conn:
            by = {v.judge: v for v in conn.execute(select(db.game_model_verdicts)).all()}
        assert by["live"].model_wrong is False and by["live"].correction_ok is True
        assert by["dead"].model_wrong is None and "cannot reach" in (by["dead"].error or "")
    finally:
        g.engine.dispose()


def test_a_bad_panel_is_refused(game: Game, vlm: VLMServer) -> None:
    h = {"Authorization": f"Bearer {ADMIN}"}
    base = {"pool": str(game.pools.main), "easy_pool": str(game.pools.easy), "vlm_url": vlm.base_url}
    base |= {"model": "tiny-synth"}
    twice = game.admin.post(
        "/api/v1/game/games", headers=h, json=base | {"name": "g2"} | {"vlm_judges": _panel(vlm, "a", "a")}
    )
    assert twice.status_code == 422 and "same name" in twice.text
    runner = CliRunner()
    out = runner.invoke(cli, ["game", "create", "g3", "--pool", "p", "--easy-pool", "e", "--vlm-url", "http://x/v1",
                              "--vlm-judge", "no-url-here"])  # fmt: skip
    assert out.exit_code != 0 and "expected MODEL@URL" in out.output


def test_a_judge_who_says_wrong_to_everything_loses_its_voice(game: Game) -> None:
    """Judges' records against known truth (settled flags, tainted flags) decide who has a voice."""
    c = game.guest("author")
    judge = game.guest("always-wrong")
    fair = game.guest("fair")
    F, J = db.game_flags, db.game_judgements
    # flags of known truth, judged: some the model got wrong (tainted/confirmed), some it got right
    played = game.play(c, flag_when=lambda tainted, right: True)
    assert played["state"] == "finished"
    with db.begin_write(game.engine) as conn:
        ids = [i for (i,) in conn.execute(select(F.c.id).order_by(F.c.id)).all()]
        truth = ["tainted"] * 5 + ["overturned"] * 5
        for fid, state in zip(ids, truth, strict=True):
            conn.execute(update(F).where(F.c.id == fid).values(state=state))
            for who, says in ((judge, True), (fair, state == "tainted")):
                conn.execute(
                    J.insert().values(
                        public_id=f"{fid:08d}{who.player_id:08d}".ljust(32, "0"),  # type: ignore[attr-defined]
                        flag_id=fid,
                        player_id=who.player_id,  # type: ignore[attr-defined]
                        model_wrong=says,
                        assigned_at=db.utcnow(),
                        answered_at=db.utcnow(),
                    )
                )
        skill = judging.judge_skill(conn, [judge.player_id, fair.player_id])  # type: ignore[attr-defined]
    bad, good = skill[judge.player_id], skill[fair.player_id]  # type: ignore[attr-defined]
    assert (bad.n_wrong, bad.said_wrong, bad.n_right, bad.said_right) == (5, 5, 5, 0)
    assert not bad.has_voice and bad.skill < judging.JUDGE_MIN_SKILL
    assert good.has_voice and good.skill > 0.6
    assert "your votes do not count" in judge.get("/api/v1/game/me").json()["judging"]
    assert fair.get("/api/v1/game/me").json()["judging"].startswith("your votes count (5 of 5")
    # on a flag still open, only the fair judge's vote counts
    with db.begin_write(game.engine) as conn:
        conn.execute(update(F).where(F.c.id == ids[-1]).values(state="pending"))
        author_cid = judging._flag_context(conn, ids[-1]).author_cid
        assert judging.tally(conn, ids[-1], author_cid) == (0, 1)
    # on probation (too few checks of each kind) a judge keeps its voice
    assert judging.JudgeSkill(3, 3, 3, 0).has_voice


def test_judging_tasks_include_tainted_checks(game: Game, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(judging, "GOLD_SHARE", 1.0)
    author = game.guest("author")
    game.play(author, flag_when=lambda tainted, right: tainted)  # five tainted flags, nothing pending
    judge = game.guest("judge")
    with db.begin_write(game.engine) as conn:  # past probation, so the judge may judge
        conn.execute(
            update(db.game_reliability)
            .where(db.game_reliability.c.player_id == judge.player_id)  # type: ignore[attr-defined]
            .values(n_tainted=10)
        )
    task = judge.post("/api/v1/game/judgements/next")
    assert task.status_code == 200, task.text
    r = judge.post(f"/api/v1/game/judgements/{task.json()['task_id']}", json={"model_wrong": True})
    assert r.status_code == 200
    with game.engine.connect() as conn:
        skill = judging.judge_skill(conn, [judge.player_id])[judge.player_id]  # type: ignore[attr-defined]
        states = {s for (s,) in conn.execute(select(db.game_flags.c.state)).all()}
    assert (skill.n_wrong, skill.said_wrong) == (1, 1) and states == {"tainted"}  # a check changes nothing
