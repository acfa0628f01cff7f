"""Leasing reads only leasable units: behind thousands of verified units and units whose replicas
are all out, the pick goes through the partial index `ix_units_open` and probes the contributor's
replicas one unit at a time (it used to walk the primary key past all of them)."""

from __future__ import annotations

from sqlalchemy import insert, text
from sqlalchemy.engine import Engine

from vlcurate.server import db, leasing
from vlcurate.server.migrate import upgrade


def _queue_with_busy_front(engine: Engine, n_verified: int, n_out: int, n_open: int) -> None:
    """Units 1..n_verified verified, then n_out open with every replica out, then n_open leasable."""
    with db.begin_write(engine) as conn:
        ds = conn.execute(
            insert(db.datasets).values(name="d", source="synthetic", n_items=1).returning(db.datasets.c.id)
        ).scalar_one()
        conn.execute(insert(db.items).values(id=1, dataset_id=ds, uid="0" * 32, shard="s", key="0"))
        task = conn.execute(
            insert(db.tasks)
            .values(
                name="t",
                dataset_id=ds,
                kind="dva-score",
                model="tiny-synth",
                model_fingerprint="f" * 64,
                preprocessing={},
                quorum=2,
                max_replicas=4,
                tolerance=0.01,
                agree_fraction=0.9,
                unit_size=1,
                gold_per_unit=0,
                points_per_pair=1.0,
                lease_seconds=60,
                trust_after=10,
                min_audit_rate=0.1,
            )
            .returning(db.tasks.c.id)
        ).scalar_one()
        conn.execute(
            insert(db.units),
            [
                dict(
                    task_id=task,
                    seq=k,
                    first_item=1,
                    last_item=1,
                    n_items=1,
                    state="verified" if k < n_verified else "open",
                    target=2,
                    issued=2 if k < n_verified + n_out else 0,
                )
                for k in range(n_verified + n_out + n_open)
            ],
        )
        # the contributor holds a replica of every verified unit (3,000 rows its test must not scan)
        who = conn.execute(
            insert(db.contributors).values(name="c").returning(db.contributors.c.id)
        ).scalar_one()
        agent = conn.execute(
            insert(db.agents)
            .values(contributor_id=who, name="a", token_hash="h" * 64, rate_per_minute=60, daily_quota=10)
            .returning(db.agents.c.id)
        ).scalar_one()
        now = db.utcnow()
        conn.execute(
            insert(db.replicas),
            [
                dict(
                    unit_id=k + 1,
                    task_id=task,
                    contributor_id=who,
                    agent_id=agent,
                    seed=k,
                    gold_items=[],
                    state="valid",
                    deadline=now,
                )
                for k in range(n_verified)
            ],
        )
        conn.exec_driver_sql("ANALYZE")


def test_the_pick_uses_the_leasable_units_index_behind_a_busy_front(platform_db: str) -> None:
    engine = db.make_engine(platform_db)
    upgrade(engine)
    _queue_with_busy_front(engine, n_verified=3000, n_out=500, n_open=3000)
    with engine.connect() as conn:
        for pick, start in (
            (leasing._PICK_AFTER, 0),
            (leasing._PICK_AFTER, 5000),
            (leasing._PICK_BEFORE, 5000),
        ):
            sql = str(pick.text)
            params = {"b_task": 1, "b_contributor": 1, "b_start": start}
            if engine.dialect.name == "postgresql":
                plan = "\n".join(
                    r[0]
                    for r in conn.execute(text("EXPLAIN " + sql + " FOR UPDATE OF un SKIP LOCKED"), params)
                )
                assert "ix_units_open" in plan, plan
                assert "uq_replicas_unit_contributor_live" in plan, plan
                assert "Seq Scan" not in plan, plan
            else:
                plan = "\n".join(str(r[-1]) for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql), params))
                assert "ix_units_open" in plan, plan
        first = conn.execute(leasing._PICK_AFTER, {"b_task": 1, "b_contributor": 1, "b_start": 0}).first()
        later = conn.execute(leasing._PICK_AFTER, {"b_task": 1, "b_contributor": 1, "b_start": 5000}).first()
        wrap = conn.execute(leasing._PICK_AFTER, {"b_task": 1, "b_contributor": 1, "b_start": 7000}).first()
    assert first is not None and first.id == 3501  # the first leasable unit from the start
    assert later is not None and later.id == 5001  # the first leasable one at or after a random place
    assert wrap is None  # past the last unit: `_PICK_BEFORE` wraps around
    engine.dispose()
