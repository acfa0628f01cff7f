"""Players cannot tell tainted images from untainted ones through the API: the same fields, the
same headers, answers in the same timing class; and the ledger stays append-only with game entries."""

from __future__ import annotations

import statistics
import time
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError
from tests.game.conftest import Game

from vlcurate.server import db


def _shape(value: Any) -> Any:
    """The structure of a JSON value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_shape(v) for v in value[:1]]
    return type(value).__name__


def test_tainted_and_untainted_images_answer_alike(game: Game) -> None:
    shapes: dict[bool, set[str]] = {True: set(), False: set()}
    headers: dict[bool, set[frozenset[str]]] = {True: set(), False: set()}
    times: dict[bool, list[float]] = {True: [], False: []}
    for round_ in range(2):
        c = game.guest(f"p{round_}")
        body = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
        sid = body["session_id"]
        while body["state"] == "active":
            im = body["image"]
            iid = im["image_id"]
            t = game.tainted(iid)
            shapes[t].add(repr(_shape({k: v for k, v in body.items() if k != "summary"})))
            img = c.get(im["url"])
            headers[t].add(frozenset(k for k in img.headers if k != "content-length"))
            for q in ("How many objects are there?", "What colour is the background?"):
                t0 = time.perf_counter()
                r = game.ask(c, sid, iid, q)
                times[t].append(time.perf_counter() - t0)
                shapes[t].add(repr(_shape(r.json())))
                headers[t].add(frozenset(k for k in r.headers if k != "content-length"))
            f = c.post(
                f"/api/v1/game/sessions/{sid}/images/{iid}/flag",
                json={"question_id": r.json()["question_id"]},
            )
            shapes[t].add(repr(_shape(f.json())))
            body = c.post(f"/api/v1/game/sessions/{sid}/next", json={"position": im["position"]}).json()
    assert shapes[True] == shapes[False]
    assert headers[True] == headers[False]
    # the same timing class: medians within a factor of two of each other
    m_t, m_u = statistics.median(times[True]), statistics.median(times[False])
    assert 0.5 < m_t / m_u < 2.0, (m_t, m_u)


def test_no_response_while_playing_names_the_pool_or_the_taint(game: Game) -> None:
    c = game.guest()
    body = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
    raw = repr(body).lower()
    for word in ("taint", "easy", "pool", "uid", "img0"):
        assert word not in raw


def test_the_ledger_stays_append_only_with_game_entries(game: Game) -> None:
    game.play(game.guest(), lambda t, r: t)
    with game.engine.connect() as conn:
        entry = conn.execute(select(db.ledger.c.id)).first()
    assert entry is not None
    for sql in ("UPDATE ledger SET points = 1000", "DELETE FROM ledger"):
        with pytest.raises(DBAPIError, match="append-only"), db.begin_write(game.engine) as conn:
            conn.execute(text(sql))
