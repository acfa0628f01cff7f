"""End to end on SQLite and PostgreSQL: register, lease, score, submit, verify, pay, export, filter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow.parquet as pq
from sqlalchemy import select
from tests.platform_live import HonestAgent, setup_task

from vlcurate.server import db
from vlcurate.server.export import export_task
from vlcurate.server.ledger import audit


def _drain(agents: list[HonestAgent], limit: int = 200) -> int:
    """Let the agents work round-robin until no one gets a lease; returns submissions made."""
    n = 0
    idle = 0
    while idle < len(agents) and n < limit:
        idle = 0
        for a in agents:
            if a.work_one() is None:
                idle += 1
            else:
                n += 1
    return n


def test_two_honest_contributors_verify_everything_and_export_like_score(
    live_platform: Any, small_pool: Path, tmp_path: Path
) -> None:
    task, tokens = setup_task(live_platform.url, str(small_pool), unit_size=64, gold_per_unit=4)
    assert task["n_units"] == 5  # 300 pairs / 64
    agents = [HonestAgent(live_platform.url, t) for t in tokens]
    assert _drain(agents) == 10  # every unit scored by both contributors, nothing more
    with live_platform.engine.connect() as conn:
        states = {r.state for r in conn.execute(select(db.units.c.state))}
        assert states == {"verified"}
        assert audit(conn) == []
        points = dict(conn.execute(select(db.contributors.c.name, db.contributors.c.points)).all())
    assert points == {"contrib-0": 300.0, "contrib-1": 300.0}  # one point per validated pair each
    me = agents[0].http.get("/api/v1/me").json()
    assert me["points"] == 300.0 and me["valid_results"] == 5 and not me["paused"]

    out = tmp_path / "verified"
    summary = export_task(live_platform.engine, "t", out)
    assert summary["shards_done"] == 3 and summary["pairs"] == 300
    # The exported scores are what `vlcurate score` gives for the same pairs.
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    scored = tmp_path / "scored"
    score_dataset(str(small_pool), scored, ScoreConfig(model="tiny-synth", progress=False, workers=0))
    ours = {
        r["uid"]: r["score"]
        for f in sorted((out / "scores").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    }
    ref = {
        r["uid"]: r["score"]
        for f in sorted((scored / "scores").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    }
    assert ours.keys() == ref.keys()
    diff = np.array([abs(ours[u] - ref[u]) for u in ref if ref[u] is not None])
    assert diff.max() < 0.02

    # ...so `vlcurate filter` runs on the export unchanged.
    from vlcurate.ops.score_filter import run_filter
    from vlcurate.ops.score_filter_config import FilterConfig

    result = run_filter(str(out), tmp_path / "filtered", FilterConfig(top_fraction=0.5))
    assert result.kept == 150


def test_a_handed_back_unit_can_come_back_and_live_replicas_never_repeat(
    live_platform: Any, small_pool: Path
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=300, contributors=2, gold_per_unit=2)
    a, b = (HonestAgent(live_platform.url, t) for t in tokens)
    first = a.lease()
    assert first is not None
    # Handing it back frees the replica at once and counts as a walk-away; the unit (the only one)
    # may come back to the same contributor, so two contributors can still verify it.
    assert a.http.delete(f"/api/v1/leases/{first['lease_id']}").status_code == 204
    again = a.lease()
    assert again is not None and again["unit_id"] == first["unit_id"]
    assert a.lease() is None  # never two live replicas of one unit for one contributor
    lb = b.lease()
    assert lb is not None and lb["unit_id"] == first["unit_id"]
    # Item ids are per lease: the same pair has different ids in different leases.
    assert not {it["item_id"] for it in lb["items"]} & {it["item_id"] for it in again["items"]}
    a.submit(again, a.answers(again))
    out = b.submit(lb, b.answers(lb)).json()
    assert out["state"] == "valid"
    with live_platform.engine.connect() as conn:
        rows = conn.execute(
            select(db.replicas.c.unit_id, db.replicas.c.contributor_id, db.replicas.c.state)
        ).all()
        assert sorted(s for *_, s in rows) == ["released", "valid", "valid"]
        walked = conn.execute(select(db.contributors.c.name, db.contributors.c.walkaways)).all()
        assert {n: w for n, w in walked if w} == {"contrib-0": 1}


def test_expired_lease_goes_back_to_the_queue(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(
        live_platform.url,
        str(small_pool),
        unit_size=300,
        lease_seconds=5,
        gold_per_unit=0,
        contributors=3,
        gold={"self_score": 0},
    )
    a, b, c = (HonestAgent(live_platform.url, t) for t in tokens)
    la, lb = a.lease(), b.lease()
    assert la is not None and lb is not None and c.lease() is None  # quorum 2: the only unit is full
    hb = a.http.post(f"/api/v1/leases/{la['lease_id']}/heartbeat")
    assert hb.status_code == 200
    import time

    deadline = time.monotonic() + 20
    got = None
    while got is None and time.monotonic() < deadline:
        time.sleep(0.5)
        a.http.post(f"/api/v1/leases/{la['lease_id']}/heartbeat")  # a keeps its lease alive, b went silent
        got = c.lease()
    assert got is not None and got["unit_id"] == lb["unit_id"]
    late = b.submit(lb, b.answers(lb))
    assert late.status_code == 409 and "expired" in late.json()["detail"]


def test_repeated_submission_is_answered_once_and_credited_once(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=300, gold_per_unit=4)
    a, b = (HonestAgent(live_platform.url, t) for t in tokens)
    la, lb = a.lease(), b.lease()
    assert la and lb
    ra = a.submit(la, a.answers(la), key="key-a-000001").json()
    answers_b = b.answers(lb)
    first = b.submit(lb, answers_b, key="key-b-000001").json()
    assert first["state"] == "valid" and first["points_credited"] == 300.0
    for _ in range(3):
        again = b.submit(lb, answers_b, key="key-b-000001").json()
        assert again["replayed"] and again["submission_id"] == first["submission_id"]
        assert again["points_credited"] == 300.0
    other_key = b.submit(lb, answers_b, key="key-b-000002")
    assert other_key.status_code == 422 and "already submitted" in other_key.json()["detail"]
    with live_platform.engine.connect() as conn:
        assert conn.execute(select(db.ledger.c.id)).all().__len__() == 2
        assert audit(conn) == []
    assert ra["state"] == "pending"
    assert httpx.get(f"{live_platform.url}/api/v1/contributors").status_code == 200


def test_a_retried_lease_request_gets_the_same_lease(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, gold_per_unit=2)
    a = HonestAgent(live_platform.url, tokens[0])
    key = {"Idempotency-Key": "lease-retry-0001"}
    first = a.http.post("/api/v1/leases", headers=key).json()
    again = a.http.post("/api/v1/leases", headers=key).json()
    assert again == first  # the answer to a lost response is the same lease, not a second one
    other = a.http.post("/api/v1/leases", headers={"Idempotency-Key": "lease-retry-0002"}).json()
    assert other["lease_id"] != first["lease_id"]
    a.http.delete(f"/api/v1/leases/{first['lease_id']}")
    gone = a.http.post("/api/v1/leases", headers=key)
    assert gone.status_code == 409 and "released" in gone.json()["detail"]


def test_an_idempotency_key_reused_on_another_lease_is_a_409_and_nothing_is_dropped(
    live_platform: Any, small_pool: Path
) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, contributors=1, gold_per_unit=2)
    a = HonestAgent(live_platform.url, tokens[0])
    first, second = a.lease(), a.lease()
    assert first is not None and second is not None
    assert a.submit(first, a.answers(first), key="same-key-0001").status_code == 200
    answers = a.answers(second)
    for path in ("submit", "submit-and-lease"):  # the general and the combined call, both databases
        body = {
            "idempotency_key": "same-key-0001",
            "model_fingerprint": second["task"]["model_fingerprint"],
            "results": answers,
        }
        r = a.http.post(f"/api/v1/leases/{second['lease_id']}/{path}", json=body)
        assert r.status_code == 409 and f"already used for lease {first['lease_id']}" in r.json()["detail"]
    with live_platform.engine.connect() as conn:
        state = conn.execute(
            select(db.replicas.c.state).where(db.replicas.c.id == second["lease_id"])
        ).scalar()
    assert state == "leased"  # the second lease was not silently taken as submitted
    out = a.submit(second, answers, key="other-key-0002")
    assert out.status_code == 200 and out.json()["lease_id"] == second["lease_id"]
