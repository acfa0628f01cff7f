"""Hidden checks: each unit's own pairs with trusted answers; a key the server no longer stands by is
retired when a trusted contributor fails it, while a trusted cheater's failure still counts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select, update
from tests.platform_live import HonestAgent, admin_headers, setup_task
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.server import db
from vlcurate.server.ledger import audit


def _agent(url: str, name: str) -> HonestAgent:
    r = httpx.post(f"{url}/api/v1/agents", json={"contributor": name}, headers=admin_headers())
    r.raise_for_status()
    return HonestAgent(url, r.json()["token"])


def _trust(engine: Any, name: str) -> None:
    """Make a contributor trusted (a long valid streak), as if it had earned it."""
    C = db.contributors
    with engine.begin() as conn:
        conn.execute(update(C).where(C.c.name == name).values(valid_streak=50, n_valid=50))


def _poison_keys(engine: Any, unit_id: int) -> dict[int, float]:
    """Make every check of a unit wrong, as an operator's trusted run with other weights would;
    returns the right answers."""
    G, U = db.gold, db.units
    with engine.begin() as conn:
        first, last = conn.execute(select(U.c.first_item, U.c.last_item).where(U.c.id == unit_id)).one()
        where = (G.c.item_id.between(first, last), G.c.status == "ok")
        right = dict(conn.execute(select(G.c.id, G.c.score).where(*where)).all())
        conn.execute(update(G).where(*where).values(score=-0.9, source="operator"))
    return right


def _restore_keys(engine: Any, right: dict[int, float]) -> None:
    with engine.begin() as conn:
        for gid, score in right.items():
            conn.execute(update(db.gold).where(db.gold.c.id == gid).values(score=score))


def test_each_unit_has_its_own_checks_answered_by_the_server(live_platform: Any, small_pool: Path) -> None:
    setup_task(live_platform.url, str(small_pool), unit_size=50, gold_per_unit=3, contributors=0)
    with live_platform.engine.connect() as conn:
        units = conn.execute(select(db.units.c.first_item, db.units.c.last_item)).all()
        gold = conn.execute(select(db.gold.c.item_id, db.gold.c.source)).all()
    assert len(units) == 6 and len(gold) == 18
    assert {s for _, s in gold} == {"server"}
    for first, last in units:  # three per unit, inside it
        assert sum(first <= g <= last for g, _ in gold) == 3


def test_a_trusted_contributor_failing_a_wrong_key_retires_it(
    live_platform: Any, small_pool: Path, tmp_path: Path
) -> None:
    setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=4, contributors=0)
    honest = _agent(live_platform.url, "veteran")
    _trust(live_platform.engine, "veteran")
    lease = honest.lease()
    assert lease is not None
    assert _poison_keys(live_platform.engine, lease["unit_id"])
    out = honest.submit(lease, honest.answers(lease)).json()
    assert out["state"] in ("pending", "valid"), out  # not failed: the server re-scored and agreed
    with live_platform.engine.connect() as conn:
        retired = conn.execute(select(func.count()).where(db.gold.c.retired_at.is_not(None))).scalar_one()
        disputes = conn.execute(select(db.check_disputes.c.upheld)).scalars().all()
        c = conn.execute(select(db.contributors).where(db.contributors.c.name == "veteran")).one()
    assert retired >= 1 and disputes and not any(disputes)
    assert c.gold_fail == 0 and not c.paused
    db_path = live_platform.engine.url.render_as_string(hide_password=False)
    if db_path.startswith("sqlite"):
        got = CliRunner().invoke(app, ["platform", "audit", "--db", db_path.removeprefix("sqlite:///")])
        assert got.exit_code == 0, got.output
        assert "retired check (look at it)" in got.output and "the key says -0.9000" in got.output


def test_a_newcomer_failing_a_wrong_key_is_not_believed_and_a_trusted_cheater_is_caught(
    live_platform: Any, small_pool: Path
) -> None:
    setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=4, contributors=0)
    newcomer = _agent(live_platform.url, "newcomer")
    lease = newcomer.lease()
    assert lease is not None
    right = _poison_keys(live_platform.engine, lease["unit_id"])
    out = newcomer.submit(lease, newcomer.answers(lease)).json()
    assert out["state"] == "invalid" and "hidden checks" in out["detail"]  # only a trusted word is re-checked
    _restore_keys(live_platform.engine, right)
    cheater = _agent(live_platform.url, "turncoat")
    _trust(live_platform.engine, "turncoat")
    for _ in range(2):
        lease = cheater.lease()
        assert lease is not None
        junk = [{"item_id": it["item_id"], "score": 0.05} for it in lease["items"]]
        cheater.submit(lease, junk)
    me = cheater.http.get("/api/v1/me").json()
    assert me["paused"] and "hidden checks" in me["pause_reason"]
    with live_platform.engine.connect() as conn:
        upheld = conn.execute(select(db.check_disputes.c.upheld)).scalars().all()
        assert upheld and all(upheld)  # the server stood by its own answers
        assert audit(conn) == []


def test_a_small_scoring_budget_thins_every_units_checks_alike(live_platform: Any, small_pool: Path) -> None:
    setup_task(
        live_platform.url,
        str(small_pool),
        unit_size=50,
        gold_per_unit=3,
        gold={"self_score": 6},
        contributors=0,
    )
    with live_platform.engine.connect() as conn:
        units = conn.execute(select(db.units.c.first_item, db.units.c.last_item)).all()
        gold = conn.execute(select(db.gold.c.item_id)).scalars().all()
    # 6 units, 6 pairs the server may score: one check in every unit, none left unguarded
    assert sorted(sum(first <= g <= last for g in gold) for first, last in units) == [1] * 6
