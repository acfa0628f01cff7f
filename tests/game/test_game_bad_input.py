"""Bad input, per the issue: answers after the timer, flags for images not in the session, replayed
and forged requests, another player's session, forged or stale Telegram data, HTML in questions,
oversized questions, a model server that times out or answers nothing. Each gets a clear 4xx/5xx,
nothing is counted twice, and nothing is stored that should not be."""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest
from sqlalchemy import func, select
from tests.game.conftest import BOT_TOKEN, Game, Pools, make_game
from tests.platform_live import ADMIN, free_port
from tests.vlm_live import VLMServer

from vlcurate.server import db
from vlcurate.server.game import telegram


def _count(g: Game, table: object) -> int:
    with g.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def _start(g: Game, c: object) -> dict:
    r = c.post("/api/v1/game/sessions", json={"game": "g1"})  # type: ignore[attr-defined]
    assert r.status_code == 201, r.text
    return r.json()


def test_questions_and_flags_after_the_timer_are_refused_and_nothing_is_stored(game: Game) -> None:
    c = game.guest()
    s = _start(game, c)
    sid, iid = s["session_id"], s["image"]["image_id"]
    q = game.ask(c, sid, iid, "How many objects are there?").json()
    game.expire(iid)
    late = game.ask(c, sid, iid, "What colour is the background?")
    assert late.status_code == 409 and "time ran out" in late.json()["detail"]
    f = c.post(f"/api/v1/game/sessions/{sid}/images/{iid}/flag", json={"question_id": q["question_id"]})
    assert f.status_code == 409 and "time ran out" in f.json()["detail"]
    assert _count(game, db.game_questions) == 1 and _count(game, db.game_flags) == 0
    view = c.get(f"/api/v1/game/sessions/{sid}").json()
    assert view["image"]["state"] == "done" and view["image"]["seconds_left"] == 0.0
    n = c.post(f"/api/v1/game/sessions/{sid}/next", json={"position": 0}).json()
    assert n["position"] == 1
    with game.engine.connect() as conn:
        outcome = conn.execute(
            select(db.game_session_images.c.outcome).where(db.game_session_images.c.public_id == iid)
        ).scalar_one()
    assert outcome == "timeout"
    # the finished image is done for good: no question, no flag
    assert game.ask(c, sid, iid, "How many objects are there?").status_code == 409


def test_flags_for_images_or_questions_not_in_the_session_are_404(game: Game) -> None:
    c = game.guest()
    a, b = _start(game, c), None
    qa = game.ask(c, a["session_id"], a["image"]["image_id"], "How many objects are there?").json()
    other = game.guest()
    b = _start(game, other)
    qb = game.ask(other, b["session_id"], b["image"]["image_id"], "How many objects are there?").json()
    # an image of another player's session, in my session
    r = c.post(
        f"/api/v1/game/sessions/{a['session_id']}/images/{b['image']['image_id']}/flag",
        json={"question_id": qb["question_id"]},
    )
    assert r.status_code == 404 and "not in this session" in r.json()["detail"]
    # another image's question on my image
    r = c.post(
        f"/api/v1/game/sessions/{a['session_id']}/images/{a['image']['image_id']}/flag",
        json={"question_id": qb["question_id"]},
    )
    assert r.status_code == 404
    # an image of my session that has not started
    with game.engine.connect() as conn:
        later = conn.execute(
            select(db.game_session_images.c.public_id)
            .join(db.game_sessions, db.game_sessions.c.id == db.game_session_images.c.session_id)
            .where(db.game_sessions.c.public_id == a["session_id"], db.game_session_images.c.position == 5)
        ).scalar_one()
    r = game.ask(c, a["session_id"], later, "How many objects are there?")
    assert r.status_code == 409 and "not started" in r.json()["detail"]
    assert c.get(f"/api/v1/game/images/{later}").status_code == 404
    assert _count(game, db.game_flags) == 0
    assert qa["question_id"] != qb["question_id"]


def test_another_players_session_and_forged_ids_look_like_nothing(game: Game) -> None:
    alice, mallory = game.guest("alice"), game.guest("mallory")
    s = _start(game, alice)
    sid, iid = s["session_id"], s["image"]["image_id"]
    for r in (
        mallory.get(f"/api/v1/game/sessions/{sid}"),
        mallory.post(f"/api/v1/game/sessions/{sid}/next", json={"position": 0}),
        game.ask(mallory, sid, iid, "How many objects are there?"),
        mallory.get(f"/api/v1/game/images/{iid}"),
        mallory.get(f"/api/v1/game/sessions/{uuid.uuid4().hex}"),
    ):
        assert r.status_code == 404, r.text
    assert mallory.get("/api/v1/game/sessions/1").status_code == 422  # row ids are never accepted
    assert alice.get(f"/api/v1/game/images/{iid}").headers["content-type"] == "image/png"
    anon = game.client()
    assert anon.post("/api/v1/game/sessions", json={"game": "g1"}).status_code == 401
    anon.headers["Authorization"] = "Bearer vlp_forged"
    assert anon.get("/api/v1/game/me").status_code == 401
    assert alice.post("/api/v1/game/games", json={}).status_code in (403, 422)
    assert _count(game, db.game_questions) == 0


def test_replayed_requests_count_once(game: Game) -> None:
    c = game.guest()
    s = _start(game, c)
    sid, iid = s["session_id"], s["image"]["image_id"]
    first = game.ask(c, sid, iid, "How many objects are there?", key="k-00000001").json()
    again = game.ask(c, sid, iid, "How many objects are there?", key="k-00000001").json()
    assert again["question_id"] == first["question_id"] and again["replayed"] and not first["replayed"]
    assert _count(game, db.game_questions) == 1
    body = {"question_id": first["question_id"], "corrected": "4"}
    f1 = c.post(f"/api/v1/game/sessions/{sid}/images/{iid}/flag", json=body).json()
    f2 = c.post(f"/api/v1/game/sessions/{sid}/images/{iid}/flag", json=body).json()
    assert f1["flag_id"] == f2["flag_id"] and f2["replayed"]
    assert _count(game, db.game_flags) == 1
    n1 = c.post(f"/api/v1/game/sessions/{sid}/next", json={"position": 0}).json()
    n2 = c.post(f"/api/v1/game/sessions/{sid}/next", json={"position": 0}).json()  # a retry: no skip
    assert n1["position"] == n2["position"] == 1
    assert n1["image"]["image_id"] == n2["image"]["image_id"]


def test_html_in_questions_is_stored_as_text_and_oversized_questions_are_refused(game: Game) -> None:
    c = game.guest('<img src=x onerror="alert(1)">')
    s = _start(game, c)
    sid, iid = s["session_id"], s["image"]["image_id"]
    evil = '<script>alert("x")</script> How many objects are there?'
    r = game.ask(c, sid, iid, evil)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    assert r.json()["question"] == evil
    with game.engine.connect() as conn:
        assert conn.execute(select(db.game_questions.c.text)).scalar_one() == evil
    big = game.ask(c, sid, iid, "x" * 501)
    assert big.status_code == 422 and "at most 500" in big.json()["detail"]
    assert game.ask(c, sid, iid, "x" * 5000).status_code == 422
    assert game.ask(c, sid, iid, "   ").status_code == 422
    assert _count(game, db.game_questions) == 1
    assert c.get("/api/v1/game/me").json()["name"] == '<img src=x onerror="alert(1)">'


def _init_data(user_id: int, auth_date: int, bot: str = BOT_TOKEN, **extra: str) -> str:
    fields = {
        "auth_date": str(auth_date),
        "query_id": "AAH",
        "user": json.dumps({"id": user_id, "first_name": "Ann"}),
    }
    fields.update(extra)
    fields["hash"] = telegram.sign(fields, bot)
    return urlencode(fields)


def test_telegram_login_checks_the_signature_and_freshness(game: Game) -> None:
    c = game.client()
    now = int(time.time())
    ok = c.post("/api/v1/game/login/telegram", json={"init_data": _init_data(42, now)})
    assert ok.status_code == 200 and ok.json()["kind"] == "telegram" and ok.json()["name"] == "Ann"
    again = c.post("/api/v1/game/login/telegram", json={"init_data": _init_data(42, now)})
    assert again.json()["player_id"] == ok.json()["player_id"]  # the same Telegram user, one player
    forged = _init_data(42, now).replace("Ann", "Bob")
    cases = {
        "does not match": forged,
        "another bot": _init_data(43, now, bot="999:other"),
        "stale": _init_data(42, now - 7200),
        "future": _init_data(42, now + 3600),
        "no hash": urlencode({"auth_date": now, "user": json.dumps({"id": 1})}),
        "repeats": _init_data(42, now) + "&auth_date=1",
    }
    for word, data in cases.items():
        r = c.post("/api/v1/game/login/telegram", json={"init_data": data})
        assert r.status_code == 401, (word, r.text)
    assert (
        "stale" in c.post("/api/v1/game/login/telegram", json={"init_data": cases["stale"]}).json()["detail"]
    )
    with game.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.game_players)).scalar_one() == 1


@pytest.fixture(scope="module")
def silent_port() -> Iterator[int]:
    """A port that accepts connections (the kernel's backlog) and never answers: a hung model."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock.getsockname()[1]
    sock.close()


@pytest.mark.parametrize("where", ["closed port", "hangs"])
def test_a_model_that_does_not_answer_is_a_502_and_nothing_is_stored(
    where: str, tmp_path: Path, pools: Pools, silent_port: int
) -> None:
    port = free_port() if where == "closed port" else silent_port
    url = f"http://127.0.0.1:{port}/v1"

    class _Url:
        base_url = url

    g = make_game(str(tmp_path / "g.db"), pools, _Url(), vlm_timeout_s=0.5)  # type: ignore[arg-type]
    c = g.guest()
    s = _start(g, c)
    t0 = time.monotonic()
    r = g.ask(c, s["session_id"], s["image"]["image_id"], "How many objects are there?")
    assert r.status_code == 502 and "nothing was stored" in r.json()["detail"], r.text
    assert time.monotonic() - t0 < 4.0
    assert _count(g, db.game_questions) == 0
    g.engine.dispose()
    assert ADMIN


def test_a_new_session_abandons_the_old_one_which_then_accepts_nothing(game: Game) -> None:
    c = game.guest()
    old = _start(game, c)
    sid, iid = old["session_id"], old["image"]["image_id"]
    q = game.ask(c, sid, iid, "How many objects are there?").json()
    _start(game, c)
    assert c.get(f"/api/v1/game/sessions/{sid}").json()["state"] == "abandoned"
    r = game.ask(c, sid, iid, "What colour is the background?")
    assert r.status_code == 409 and "abandoned" in r.json()["detail"]
    f = c.post(f"/api/v1/game/sessions/{sid}/images/{iid}/flag", json={"question_id": q["question_id"]})
    assert f.status_code == 409 and "abandoned" in f.json()["detail"]
    assert c.get(f"/api/v1/game/sessions/{sid}/summary").status_code == 409
    assert _count(game, db.game_questions) == 1 and _count(game, db.game_flags) == 0


def test_one_input_as_both_pools_never_shows_an_image_twice_in_a_session(
    tmp_path: Path, pools: Pools, vlm: VLMServer
) -> None:
    from tests.game.conftest import Game as _Game

    from vlcurate.server.app import create_app
    from vlcurate.server.settings import ServerSettings

    app = create_app(ServerSettings(db=str(tmp_path / "same.db"), admin_token=ADMIN))
    g = _Game(app, Pools(pools.main, pools.main, pools.scenes), vlm.base_url, n_images=14, n_tainted=7)
    for _ in range(3):
        c = g.guest()
        _start(g, c)
        with g.engine.connect() as conn:
            uids = conn.execute(
                select(db.game_images.c.uid)
                .join(db.game_session_images, db.game_session_images.c.image_id == db.game_images.c.id)
                .join(db.game_sessions, db.game_sessions.c.id == db.game_session_images.c.session_id)
                .where(db.game_sessions.c.player_id == c.player_id)  # type: ignore[attr-defined]
            ).all()
        assert len(uids) == 14 and len(set(uids)) == 14
    g.engine.dispose()


def test_guest_accounts_are_rate_limited_per_address_and_players_do_not_see_the_model_address(
    game: Game,
) -> None:
    c = game.client("192.0.2.200")
    codes = [c.post("/api/v1/game/login/guest", json={}).status_code for _ in range(12)]
    assert codes[0] == 200 and codes[-1] == 429
    player = game.guest()
    assert player.get("/api/v1/game/games").json()[0]["vlm_url"] == ""
    assert game.admin.get("/api/v1/game/games", headers={"Authorization": f"Bearer {ADMIN}"}).json()[0][
        "vlm_url"
    ]
