"""A whole session through the API: shape, model answers (wrong on tainted images, honest on
untainted ones), flags, the summary, the ledger and leaderboards; on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import select
from tests.game.conftest import Game, Pools, make_game
from tests.vlm_live import VLMServer

from vlcurate.server import db, ledger


@pytest.fixture
def any_db_game(platform_db: str, pools: Pools, vlm: VLMServer) -> Iterator[Game]:
    g = make_game(platform_db, pools, vlm)
    yield g
    g.engine.dispose()


def test_a_session_is_ten_images_half_tainted_and_pays_twenty_per_flagged_tainted_image(
    any_db_game: Game,
) -> None:
    g = any_db_game
    c = g.guest("careful")
    s = c.post("/api/v1/game/sessions", json={"game": "g1"}).json()
    assert s["n_images"] == 10 and s["seconds_per_image"] == 120 and s["position"] == 0
    with g.engine.connect() as conn:
        rows = conn.execute(
            select(db.game_session_images.c.tainted, db.game_images.c.pool)
            .join(db.game_images, db.game_images.c.id == db.game_session_images.c.image_id)
            .order_by(db.game_session_images.c.position)
        ).all()
    assert sum(r.tainted for r in rows) == 5
    assert all((r.pool == "easy") == r.tainted for r in rows)
    # tainted answers are wrong, untainted ones honest (tiny-synth counts 1-3 objects almost always right)
    right = {True: 0, False: 0}
    body = s
    while body["state"] == "active":
        iid = body["image"]["image_id"]
        ans = g.ask(c, s["session_id"], iid, "How many objects are there?").json()
        tainted = g.tainted(iid)
        right[tainted] += ans["answer"] == str(g.scene(iid).n_objects)
        if tainted:
            assert (
                c.post(
                    f"/api/v1/game/sessions/{s['session_id']}/images/{iid}/flag",
                    json={"question_id": ans["question_id"], "corrected": str(g.scene(iid).n_objects)},
                ).status_code
                == 200
            )
        body = c.post(
            f"/api/v1/game/sessions/{s['session_id']}/next", json={"position": body["position"]}
        ).json()
    assert right[True] == 0 and right[False] >= 4
    summary = body["summary"]
    assert body["state"] == "finished" and summary["flagged"] == 5 and summary["questions"] == 10
    assert summary["points_credited"] == 100.0 and summary["total_points"] == 100.0
    assert summary["reliability"]["earning"] and summary["reliability"]["check_images"] == 5
    assert c.get(f"/api/v1/game/sessions/{s['session_id']}/summary").json() == summary
    board = c.get("/api/v1/game/leaderboard?period=daily").json()
    assert board["entries"][0] == {"rank": 1, "name": "careful", "points": 100.0}
    assert c.get("/api/v1/game/leaderboard?period=weekly").json()["entries"] == board["entries"]
    with g.engine.connect() as conn:
        assert ledger.audit(conn) == []
        entries = conn.execute(select(db.ledger)).all()
    assert len(entries) == 5 and all(e.game_flag_id is not None and e.points == 20.0 for e in entries)
