"""Verification: concurrent leasing stays correct, cheaters fail hidden checks and get paused, credits
resting on a cheater's word alone are reversed, and the ledger refuses edits."""

from __future__ import annotations

import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from tests.platform_live import HonestAgent, admin_headers, setup_task

from vlcurate.server import db, leasing
from vlcurate.server.ledger import audit


def _new_agents(url: str, n: int, prefix: str) -> list[HonestAgent]:
    out = []
    for i in range(n):
        r = httpx.post(f"{url}/api/v1/agents", json={"contributor": f"{prefix}{i}"}, headers=admin_headers())
        out.append(HonestAgent(url, r.json()["token"]))
    return out


def test_many_agents_leasing_at_once_never_break_the_rules(live_platform: Any, small_pool: Path) -> None:
    setup_task(
        live_platform.url,
        str(small_pool),
        unit_size=10,
        contributors=0,
        gold_per_unit=0,
        gold={"self_score": 0},
        quorum=2,
    )
    agents = _new_agents(live_platform.url, 30, "crowd")
    leases: list[tuple[int, int, int]] = []
    lock = threading.Lock()
    errors: list[str] = []

    def grab(i: int, a: HonestAgent) -> None:
        for _ in range(3):
            r = a.http.post("/api/v1/leases")
            if r.status_code == 204:
                return
            if r.status_code == 429 and "active leases (cap 2)" in r.json()["detail"]:
                continue  # the third ask: an agent holds at most 2 leases at once
            if r.status_code != 200:
                errors.append(r.text)
                return
            with lock:
                leases.append((i, r.json()["unit_id"], r.json()["lease_id"]))

    threads = [threading.Thread(target=grab, args=(i, a)) for i, a in enumerate(agents)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # 30 units x quorum 2 = 60 replicas; 30 agents x 2 leases each (the cap): every replica handed out once.
    assert len(leases) == 60
    assert len({(i, u) for i, u, _ in leases}) == 60  # never the same unit twice to one contributor
    per_unit: dict[int, int] = {}
    for _, u, _ in leases:
        per_unit[u] = per_unit.get(u, 0) + 1
    assert set(per_unit.values()) == {2}
    with live_platform.engine.connect() as conn:
        rows = conn.execute(select(db.units.c.issued, db.units.c.target)).all()
        assert all(issued == target == 2 for issued, target in rows)


def _cheat(agent: HonestAgent, lease: dict[str, Any], value: float) -> dict[str, Any]:
    results = [{"item_id": it["item_id"], "score": value} for it in lease["items"]]
    return dict(agent.submit(lease, results).json())


def test_constant_score_cheater_is_paused_with_a_visible_reason(live_platform: Any, small_pool: Path) -> None:
    setup_task(live_platform.url, str(small_pool), unit_size=30, contributors=0, gold_per_unit=4)
    honest = _new_agents(live_platform.url, 2, "honest")
    (cheater,) = _new_agents(live_platform.url, 1, "cheater")
    outcomes = []
    for _ in range(2):
        lease = cheater.lease()
        assert lease is not None
        outcomes.append(_cheat(cheater, lease, 0.0))
    assert all(o["state"] == "invalid" and "hidden checks" in o["detail"] for o in outcomes)
    r = cheater.http.post("/api/v1/leases")
    assert r.status_code == 403 and "failed 2 hidden checks" in r.json()["detail"]
    me = cheater.http.get("/api/v1/me").json()
    assert me["paused"] and "hidden checks" in me["pause_reason"] and me["points"] == 0
    # The honest ones finish the units the cheater touched; nobody honest is paused.
    for _ in range(12):
        for a in honest:
            a.work_one()
    flagged = httpx.get(f"{live_platform.url}/api/v1/flagged").json()
    assert [f["name"] for f in flagged] == ["cheater0"]
    versions = httpx.get(f"{live_platform.url}/api/v1/versions").json()
    assert [v["version"] for v in versions] == ["unknown"]  # the test agents do not name a version
    assert versions[0]["gold_fail"] == 2 and versions[0]["gold_pass"] > 0 and versions[0]["agree"] > 0
    with live_platform.engine.connect() as conn:
        assert audit(conn) == []
        assert conn.execute(select(func.count()).where(db.units.c.state == "verified")).scalar_one() == 10


def test_fraud_found_later_reverses_every_credit_that_rested_on_it(
    live_platform: Any, small_pool: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Never audit trusted work in this test, so the turncoat's units rest on its word alone.
    monkeypatch.setattr(leasing, "audit_rate", lambda streak, min_rate: 0.0)
    setup_task(
        live_platform.url, str(small_pool), unit_size=20, contributors=0, gold_per_unit=4, trust_after=2
    )
    a, b = _new_agents(live_platform.url, 2, "early")
    (c,) = _new_agents(live_platform.url, 1, "late")
    for _ in range(20):  # both earn trust by agreeing with each other (units are handed out at random)
        if a.http.get("/api/v1/me").json()["trusted"]:
            break
        a.work_one()
        b.work_one()
    me = a.http.get("/api/v1/me").json()
    assert me["trusted"]
    a_id = me["contributor_id"]
    together = int(me["points"] // 20.0)
    assert together >= 2
    b_before = b.http.get("/api/v1/me").json()["points"]
    solo = [a.work_one() for _ in range(3)]  # trusted and unaudited: each unit verified on a's word
    assert all(s is not None and s["state"] == "valid" and s["points_credited"] == 20.0 for s in solo)
    assert a.http.get("/api/v1/me").json()["points"] == 20.0 * (together + 3)
    for _ in range(2):  # a turns cheater and is caught by the hidden checks
        lease = a.lease()
        assert lease is not None
        _cheat(a, lease, round(random.uniform(-1, 1), 3))
    me = a.http.get("/api/v1/me").json()
    assert me["paused"]
    # Everything that rested on a's word is undone: its solo units, and the units it verified with b
    # (b's credits on them too: b is paid again when those units re-verify with b in the quorum).
    assert me["points"] == 0
    assert b.http.get("/api/v1/me").json()["points"] == b_before - 20.0 * together
    with live_platform.engine.connect() as conn:
        kinds = dict(conn.execute(select(db.ledger.c.kind, func.count()).group_by(db.ledger.c.kind)).all())
        L = db.ledger
        a_units = {u for (u,) in conn.execute(select(L.c.unit_id).where(L.c.contributor_id == a_id))}
        on_a_units = conn.execute(
            select(func.count()).where(L.c.kind == "credit", L.c.unit_id.in_(a_units))
        ).scalar_one()
        assert kinds["reversal"] == on_a_units >= 2 * together + 3
        reopened = conn.execute(
            select(func.count()).where(db.units.c.state == "open", db.units.c.replicas_total > 0)
        ).scalar_one()
        assert reopened >= together + 3
        assert audit(conn) == []
    for _ in range(30):  # b and a newcomer re-verify the reopened units: b is credited again
        b.work_one()
        c.work_one()
    with live_platform.engine.connect() as conn:
        assert audit(conn) == []
    assert b.http.get("/api/v1/me").json()["points"] >= b_before


def test_the_ledger_is_append_only_in_the_database(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(
        live_platform.url, str(small_pool), unit_size=300, gold_per_unit=0, gold={"self_score": 0}
    )
    for t in tokens:
        HonestAgent(live_platform.url, t).work_one()
    with live_platform.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(db.ledger)).scalar_one() == 2
    for stmt in ("UPDATE ledger SET points = 1e9", "DELETE FROM ledger"):
        with pytest.raises(DBAPIError, match="append-only"), live_platform.engine.begin() as conn:
            conn.execute(text(stmt))
    with live_platform.engine.connect() as conn:
        assert conn.execute(select(func.sum(db.ledger.c.points))).scalar_one() == 600.0
