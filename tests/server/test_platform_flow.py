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
    from vlcurate.pipeline.score_config import ScoreConfig
    from vlcurate.pipeline.score_job import score_dataset

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
    from vlcurate.filtering.config import FilterConfig
    from vlcurate.filtering.run import run_filter

    result = run_filter(str(out), tmp_path / "filtered", FilterConfig(top_fraction=0.5))
    assert result.kept == 150


def test_leases_never_repeat_a_contributor_and_release_requeues(live_platform: Any, small_pool: Path) -> None:
    _, tokens = setup_task(live_platform.url, str(small_pool), unit_size=100, contributors=3, gold_per_unit=2)
    a, b, c = (HonestAgent(live_platform.url, t) for t in tokens)
    first = a.lease()
    assert first is not None
    # Handing it back frees the replica at once, but never gives the unit back to the same contributor.
    assert a.http.delete(f"/api/v1/leases/{first['lease_id']}").status_code == 204
    again = a.lease()
    assert again is not None and again["unit_id"] != first["unit_id"]
    # Two other contributors fill unit 1's quorum; a fourth lease of unit 1 is not possible.
    lb, lc = b.lease(), c.lease()
    assert lb is not None and lc is not None
    assert {lb["unit_id"], lc["unit_id"]} == {first["unit_id"], again["unit_id"]} or lb["unit_id"] == first[
        "unit_id"
    ]
    with live_platform.engine.connect() as conn:
        rows = conn.execute(
            select(db.replicas.c.unit_id, db.replicas.c.contributor_id, db.replicas.c.state)
        ).all()
        active = [(u, c_) for u, c_, s in rows if s == "leased"]
        assert len(active) == len(set(active))
        for unit in conn.execute(select(db.units)).all():
            leased = sum(1 for u, _, s in rows if u == unit.id and s == "leased")
            assert leased <= unit.target
    # Item ids are per lease: the same pair has different ids in different leases.
    ids_b = {it["item_id"] for it in lb["items"]}
    ids_a = {it["item_id"] for it in first["items"]}
    assert not ids_a & ids_b


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
