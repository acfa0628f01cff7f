"""Trust: reliability from tainted images and the bar on earning; independent confirmation of
untainted flags (never the author, never linked accounts, k agreeing voices, early stop, disputes
kept); reversals in the ledger when a confirmation no longer stands."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.game.conftest import Game
from tests.platform_live import ADMIN

from vlcurate.server import db, ledger
from vlcurate.server.game import judging
from vlcurate.server.game import reliability as rel


def careful(tainted: bool, right: bool) -> bool:
    return tainted


def _judge(c: TestClient, verdict: bool) -> dict[str, Any]:
    t = c.post("/api/v1/game/judgements/next")
    assert t.status_code == 200, t.text
    r = c.post(f"/api/v1/game/judgements/{t.json()['task_id']}", json={"model_wrong": verdict})
    assert r.status_code == 200, r.text
    return t.json()


def _author_with_untainted_flag(g: Game, address: str | None = None) -> TestClient:
    """A careful player who also flags exactly one untainted image (the first)."""
    a = g.guest("author", address=address)
    done = {"n": 0}

    def rule(tainted: bool, right: bool) -> bool:
        if tainted:
            return True
        done["n"] += 1
        return done["n"] == 1

    g.play(a, rule)
    return a


def _flag(g: Game) -> Any:
    with g.engine.connect() as conn:
        return conn.execute(select(db.game_flags).where(db.game_flags.c.tainted.is_(False))).one()


def _points(g: Game, c: TestClient) -> float:
    return float(c.get("/api/v1/game/me").json()["points"])


def test_reliability_and_the_bar_stop_flag_everything_and_never_flag_players(game: Game) -> None:
    fresh = game.guest()
    me = fresh.get("/api/v1/game/me").json()
    assert me["reliability"]["earning"] and "probation" in me["reliability"]["reason"]
    good = game.play(game.guest("good"), careful)["summary"]
    spam = game.play(game.guest("spam"), lambda t, r: True)["summary"]
    lazy = game.play(game.guest("lazy"), None)["summary"]
    assert good["reliability"]["earning"] and good["points_credited"] == 100.0
    assert good["reliability"]["detection"] > 0.8 and good["reliability"]["false_alarm"] < 0.2
    assert not spam["reliability"]["earning"] and "below the bar" in spam["reliability"]["reason"]
    assert spam["points_credited"] == 0.0 and spam["flagged"] == 10
    assert spam["reliability"]["false_alarm"] > 0.7
    assert not lazy["reliability"]["earning"] and lazy["points_credited"] == 0.0
    assert lazy["reliability"]["detection"] < 0.2
    # a player below the bar may not judge either, and is told why
    r = game.guest().post("/api/v1/game/judgements/next")
    assert r.status_code == 403 and "judging opens after 5" in r.json()["detail"]


def test_three_independent_judges_confirm_a_flag_and_the_author_is_paid_once(game: Game) -> None:
    judges = [game.guest(f"j{i}") for i in range(4)]
    for j in judges:
        game.play(j, careful)
    author = _author_with_untainted_flag(game)
    assert _flag(game).state == "pending" and 0.0 < _flag(game).posterior < 1.0
    before = _points(game, author)
    assert author.post("/api/v1/game/judgements/next").status_code == 204  # never the author
    task = _judge(judges[0], True)
    assert task["question"] == "How many objects are there?" and set(task) == {
        "task_id",
        "image_url",
        "question",
        "answer",
        "corrected",
    }
    assert judges[0].get(task["image_url"]).status_code == 200
    assert judges[1].get(task["image_url"]).status_code == 404  # another judge's task
    _judge(judges[1], False)
    assert _flag(game).state == "pending"
    _judge(judges[2], True)
    assert _flag(game).state == "pending"
    _judge(judges[3], True)  # the third agreeing voice settles it
    f = _flag(game)
    assert f.state == "confirmed" and f.votes_wrong == 3 and f.votes_right == 1 and f.disputed
    assert _points(game, author) == before + 20.0
    # settled: nobody is handed it again, and a replayed verdict changes nothing
    assert judges[0].post("/api/v1/game/judgements/next").status_code == 204
    with game.engine.connect() as conn:
        assert ledger.audit(conn) == []
        assert conn.execute(select(db.ledger).where(db.ledger.c.game_flag_id == f.id)).all()[0].points == 20.0
    # the operator sees the disagreement; players may not look
    seen = game.admin.get(
        "/api/v1/game/flags?disputed=true", headers={"Authorization": f"Bearer {ADMIN}"}
    ).json()
    assert [(x["state"], x["votes_wrong"], x["votes_right"]) for x in seen] == [("confirmed", 3, 1)]
    assert author.get("/api/v1/game/flags").status_code == 403


def test_overturned_flags_earn_nothing_and_count_as_false_alarms(game: Game) -> None:
    judges = [game.guest(f"j{i}") for i in range(3)]
    for j in judges:
        game.play(j, careful)
    author = _author_with_untainted_flag(game)
    before = _points(game, author)
    for j in judges:
        _judge(j, False)
    f = _flag(game)
    assert f.state == "overturned" and not f.disputed
    assert _points(game, author) == before
    with game.engine.connect() as conn:
        r = conn.execute(
            select(db.game_reliability).where(db.game_reliability.c.player_id == f.player_id)
        ).one()
    assert r.n_overturned == 1


def test_linked_accounts_never_judge_each_other_and_a_late_link_reverses_the_pay(game: Game) -> None:
    home = "192.0.2.77"
    judges = [game.guest(f"j{i}") for i in range(3)]
    for j in judges:
        game.play(j, careful)
    sock = game.guest("sock", address=home)
    game.play(sock, careful)
    author = _author_with_untainted_flag(game, address=home)
    # the sock puppet shares the author's address: it is never handed the author's flag
    assert sock.post("/api/v1/game/judgements/next").status_code == 204
    for j in judges:
        _judge(j, True)
    f = _flag(game)
    assert f.state == "confirmed"
    paid = _points(game, author)
    # later, one of the confirming judges turns out to share the author's address
    linked = TestClient(game.app, client=(home, 1))
    linked.headers["Authorization"] = judges[0].headers["Authorization"]
    assert linked.get("/api/v1/game/me").status_code == 200
    assert judging.reconsider_all(game.engine) == {"confirmed->pending": 1}
    assert _flag(game).state == "pending" and _points(game, author) == paid - 20.0
    with game.engine.connect() as conn:
        assert ledger.audit(conn) == []
        kinds = [e.kind for e in conn.execute(select(db.ledger).where(db.ledger.c.game_flag_id == f.id))]
    assert kinds == ["credit", "reversal"]


def test_a_task_handed_out_before_a_link_cannot_be_answered_after_it(game: Game) -> None:
    j = game.guest("j")
    game.play(j, careful)
    author = _author_with_untainted_flag(game, address="192.0.2.90")
    t = j.post("/api/v1/game/judgements/next").json()
    moved = TestClient(game.app, client=("192.0.2.90", 2))
    moved.headers["Authorization"] = j.headers["Authorization"]
    r = moved.post(f"/api/v1/game/judgements/{t['task_id']}", json={"model_wrong": True})
    assert r.status_code == 403 and "linked" in r.json()["detail"]
    assert _flag(game).votes_wrong == 0
    assert author


def test_the_estimator_recovers_known_rates_and_the_flag_posterior_matches_background() -> None:
    c = rel.Counts(n_tainted=25, n_tainted_flagged=22, n_untainted=25, n_untainted_flagged=3)
    r = rel.estimate(c, q=0.05)
    assert abs(r.a - 23 / 27) < 1e-9 and r.a_sd > 0
    assert 0.05 < r.b < 0.15
    a, b, q = 0.9, 0.05, 0.1
    p = rel.flag_posterior(rel.Reliability(a, 0.0, b, 0.0), q)
    assert abs(p - a * q / (a * q + b * (1 - q))) < 1e-12
    ok, why = rel.earning(r, c, min_skill=0.4, min_tainted_seen=5)
    assert ok and "reliable" in why


def test_a_flag_is_handed_to_no_more_judges_at_once_than_it_needs(game: Game) -> None:
    judges = [game.guest(f"j{i}") for i in range(4)]
    for j in judges:
        game.play(j, careful)
    _author_with_untainted_flag(game)
    tasks = [j.post("/api/v1/game/judgements/next") for j in judges[:3]]
    assert [t.status_code for t in tasks] == [200, 200, 200]
    assert judges[3].post("/api/v1/game/judgements/next").status_code == 204  # three already at work
    # a judge asking again gets the same open task, not a second one
    assert judges[0].post("/api/v1/game/judgements/next").json()["task_id"] == tasks[0].json()["task_id"]
    judges[0].post(f"/api/v1/game/judgements/{tasks[0].json()['task_id']}", json={"model_wrong": False})
    judges[1].post(f"/api/v1/game/judgements/{tasks[1].json()['task_id']}", json={"model_wrong": True})
    # one voice each way: three more "wrong" voices could be needed, two are at work or done
    assert judges[3].post("/api/v1/game/judgements/next").status_code == 200
