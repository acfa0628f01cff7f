"""`POST /leases/{id}/submit-and-lease` (report and request work in one call) on SQLite and
PostgreSQL: what it stores, that a retry is answered once and gets the same next unit, that it
refuses what the plain submit refuses and stores nothing then, and that it stays correct with many
agents at once."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select
from tests.platform_live import HonestAgent, setup_task

from vlcurate.server import db
from vlcurate.server.ledger import audit


def _cycle(
    agent: HonestAgent, lease: dict[str, Any], results: list[dict[str, Any]], key: str
) -> httpx.Response:
    body = {
        "idempotency_key": key,
        "model_fingerprint": lease["task"]["model_fingerprint"],
        "results": results,
    }
    return agent.http.post(f"/api/v1/leases/{lease['lease_id']}/submit-and-lease", json=body)


def _count(engine: Any, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def test_one_call_submits_verifies_and_hands_out_the_next_unit(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=2)
    a, b = (HonestAgent(live_platform.url, t) for t in tokens)
    held = {0: a.lease(), 1: b.lease()}
    done = 0
    while any(held.values()):
        for i, agent in ((0, a), (1, b)):
            lease = held[i]
            if lease is None:
                continue
            r = _cycle(agent, lease, agent.answers(lease), f"cyc-{uuid.uuid4().hex}")
            assert r.status_code == 200, r.text
            out = r.json()
            assert out["submission"]["state"] in ("pending", "valid")
            done += 1
            held[i] = out["next"]
            if out["next"] is None:
                assert out["next_detail"]
            else:
                # a unit's replicas carry its own pairs only (the hidden checks are among them)
                assert out["next"]["unit_id"] != lease["unit_id"] and len(out["next"]["items"]) == 100
    assert done == 6  # 3 units x quorum 2, nothing more
    with live_platform.engine.connect() as conn:
        assert {r.state for r in conn.execute(select(db.units.c.state))} == {"verified"}
        assert audit(conn) == []
        points = dict(conn.execute(select(db.contributors.c.name, db.contributors.c.points)).all())
    assert points == {"contrib-0": 300.0, "contrib-1": 300.0}


def test_a_retried_cycle_is_answered_once_with_the_same_next_unit(
    live_platform: Any, small_pool: Path
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=2)
    a, b = (HonestAgent(live_platform.url, t) for t in tokens)
    la, lb = a.lease(), b.lease()
    assert la and lb
    while lb["unit_id"] != la["unit_id"]:  # units go out at random: b hands back until it gets a's
        assert b.http.delete(f"/api/v1/leases/{lb['lease_id']}").status_code == 204
        lb = b.lease()
        assert lb
    assert _cycle(a, la, a.answers(la), "cyc-a-0000001").status_code == 200
    answers = b.answers(lb)
    first = _cycle(b, lb, answers, "cyc-b-0000001").json()
    assert first["submission"]["state"] == "valid" and first["submission"]["points_credited"] == 100.0
    assert first["next"] is not None
    for _ in range(3):
        again = _cycle(b, lb, answers, "cyc-b-0000001").json()
        assert again["submission"]["replayed"]
        assert again["submission"]["submission_id"] == first["submission"]["submission_id"]
        assert again["next"]["lease_id"] == first["next"]["lease_id"]
    with live_platform.engine.connect() as conn:
        assert len(conn.execute(select(db.ledger.c.id)).all()) == 2
        leased = conn.execute(
            select(func.count()).where(db.replicas.c.state == "leased", db.replicas.c.agent_id == 2)
        ).scalar_one()
        assert leased == 1  # the retries did not lease more units
        assert audit(conn) == []
    # A new key on the submitted lease is refused, as with the plain submit.
    other = _cycle(b, lb, answers, "cyc-b-0000002")
    assert other.status_code == 422 and "already submitted" in other.json()["detail"]
    # Once the next lease is handed back, a retry still gets its submission answer, and no unit.
    b.http.delete(f"/api/v1/leases/{first['next']['lease_id']}")
    late = _cycle(b, lb, answers, "cyc-b-0000001").json()
    assert late["submission"]["replayed"] and late["next"] is None and "released" in late["next_detail"]


def test_another_agents_lease_and_bad_input_are_refused_and_nothing_is_stored(
    live_platform: Any, small_pool: Path
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=2)
    a, b = (HonestAgent(live_platform.url, t) for t in tokens)
    la = a.lease()
    assert la is not None
    good = a.answers(la)
    engine = live_platform.engine
    before = (_count(engine, db.submissions), _count(engine, db.replicas))
    # b cannot report a's lease
    r = _cycle(b, la, good, "cyc-wrong-0001")
    assert r.status_code == 404 and "not held by this agent" in r.json()["detail"]
    bad_cases = [
        ([{**good[0], "score": 1.5}, *good[1:]], "[-1, 1]"),
        (good[:-3], "have no result"),
        ([*good[:-1], {**good[0]}], "twice"),
        ([*good[:-1], {"item_id": "not-in-this-unit", "score": 0.1}], "not in this unit"),
    ]
    for results, words in bad_cases:
        r = _cycle(a, la, results, f"cyc-bad-{uuid.uuid4().hex[:8]}")
        assert r.status_code == 422 and words in r.text, r.text
    r = a.http.post(
        f"/api/v1/leases/{la['lease_id']}/submit-and-lease",
        content=b'{"idempotency_key": "x", results: [',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{live_platform.url}/api/v1/leases/{la['lease_id']}/submit-and-lease",
        json={"idempotency_key": "cyc-noauth-01", "model_fingerprint": "x", "results": good},
    )
    assert r.status_code == 401
    # Nothing stored, no lease handed out; the lease still takes the honest answer.
    assert (_count(engine, db.submissions), _count(engine, db.replicas)) == before
    ok = _cycle(a, la, good, "cyc-good-0001")
    assert ok.status_code == 200 and ok.json()["submission"]["state"] == "pending"


def test_many_agents_cycling_at_once_never_share_a_replica_nor_pay_twice(
    live_platform: Any, small_pool: Path
) -> None:
    _, tokens = setup_task(
        live_platform.url,
        str(small_pool),
        unit_size=20,
        gold_per_unit=1,
        contributors=8,
        trust_after=2,
        min_audit_rate=0.5,
    )
    agents = [HonestAgent(live_platform.url, t) for t in tokens]
    lock = threading.Lock()
    errors: list[str] = []

    def work(agent: HonestAgent) -> None:
        try:
            lease = agent.lease()
            while lease is not None:
                with lock:  # scoring is not what is under test; share the tiny-synth model
                    results = agent.answers(lease)
                r = _cycle(agent, lease, results, f"cyc-{uuid.uuid4().hex}")
                if r.status_code != 200:
                    errors.append(r.text)
                    return
                lease = r.json()["next"]
        except Exception as exc:  # surfaced below
            errors.append(repr(exc))

    threads = [threading.Thread(target=work, args=(a,)) for a in agents]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    with live_platform.engine.connect() as conn:
        assert {r.state for r in conn.execute(select(db.units.c.state))} == {"verified"}
        assert audit(conn) == []
        pairs = conn.execute(select(db.replicas.c.unit_id, db.replicas.c.contributor_id)).all()
        assert len(pairs) == len(set(pairs))  # never the same unit to the same contributor twice
        assert conn.execute(select(func.count()).where(db.replicas.c.state == "leased")).scalar_one() == 0
        credited = conn.execute(
            select(db.ledger.c.submission_id, func.count())
            .where(db.ledger.c.kind == "credit")
            .group_by(db.ledger.c.submission_id)
        ).all()
        assert all(n == 1 for _, n in credited)
        verified_pairs = conn.execute(
            select(func.coalesce(func.sum(db.units.c.n_items), 0)).where(db.units.c.state == "verified")
        ).scalar_one()
        assert verified_pairs == 300


def test_an_unknown_next_task_still_takes_the_submission(live_platform: Any, small_pool: Path) -> None:
    """A `next_task_id` that names no task is about the next unit only: the submission is stored
    and answered once, and `next_detail` says why there is no next unit (both paths, both databases)."""
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=2)
    a = HonestAgent(live_platform.url, tokens[0])
    lease = a.lease()
    assert lease is not None
    body = {
        "idempotency_key": "cyc-unknown-next-01",
        "model_fingerprint": lease["task"]["model_fingerprint"],
        "results": a.answers(lease),
        "next_task_id": 999_999,
    }
    path = f"/api/v1/leases/{lease['lease_id']}/submit-and-lease"
    first = a.http.post(path, json=body)
    assert first.status_code == 200, first.text
    out = first.json()
    assert out["next"] is None and out["next_detail"] == "no task 999999"
    again = a.http.post(path, json=body)
    assert again.status_code == 200 and again.json()["submission"]["replayed"]
    assert again.json()["submission"]["submission_id"] == out["submission"]["submission_id"]
    assert _count(live_platform.engine, db.submissions) == 1
