"""The verifier's rules on their own: linked accounts are one voice and one payee, a junk pair of
linked accounts cannot outvote independent honest ones, and the reputation tally that the
PostgreSQL fast path sends is the one `record` writes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from sqlalchemy import insert, select
from tests.server.conftest import insert_task

from vlcurate.server import db, links, reputation
from vlcurate.server.migrate import upgrade
from vlcurate.server.platform import TaskInfo
from vlcurate.server.verify import judge

TASK = TaskInfo(
    id=1,
    dataset_id=1,
    kind="dva-score",
    model="tiny-synth",
    model_fingerprint="f",
    preprocessing={},
    quorum=2,
    max_replicas=5,
    tolerance=0.02,
    agree_fraction=0.98,
    unit_size=4,
    gold_per_unit=0,
    points_per_pair=1.0,
    lease_seconds=60,
    trust_after=10,
    min_audit_rate=0.1,
    state="active",
)
TRUE = [0.1, 0.2, 0.3, 0.4]
JUNK = [0.0, 0.0, 0.0, 0.0]


def _sub(cid: int, scores: list[float]) -> SimpleNamespace:
    return SimpleNamespace(contributor_id=cid, scores=np.asarray(scores, "<f4").tobytes(), statuses={})


def test_voices_group_linked_contributors_transitively() -> None:
    pairs = {frozenset((1, 2)), frozenset((2, 3))}
    assert sorted(map(sorted, links.voices([1, 2, 3, 4], pairs))) == [[0, 1, 2], [3]]
    assert links.voices([5, 6], set()) == [[0], [1]]


def test_two_linked_accounts_agreeing_are_one_voice_and_one_payee() -> None:
    subs = [_sub(1, TRUE), _sub(2, TRUE)]
    assert judge(TASK, 2, 4, subs).action == "verified"
    linked = {frozenset((1, 2))}
    more = judge(TASK, 2, 4, subs, linked)
    assert more.action == "more" and more.target == 3
    done = judge(TASK, 3, 4, [*subs, _sub(3, TRUE)], linked)
    assert done.action == "verified" and done.group == (0, 1, 2) and done.credited == (0, 2)


def test_a_linked_junk_pair_cannot_outvote_independent_honest_replicas() -> None:
    subs = [_sub(1, JUNK), _sub(2, JUNK), _sub(3, TRUE), _sub(4, TRUE)]
    got = judge(TASK, 4, 4, subs, {frozenset((1, 2))})
    assert got.action == "verified" and got.group == (2, 3)
    assert got.scores is not None and np.allclose(got.scores, TRUE)


def test_the_fast_paths_tally_is_what_record_writes(tmp_path: Path) -> None:
    engine = db.make_engine(str(tmp_path / "p.db"))
    upgrade(engine)
    with db.begin_write(engine) as conn:
        ids = [
            conn.execute(insert(db.contributors).values(name=n).returning(db.contributors.c.id)).scalar_one()
            for n in ("a", "b")
        ]
        reputation.record(conn, ids, ["v1", "v1"], agree=1, valid=1)
        reputation.record(conn, ids[0], "v1", gold_pass=1)
    with engine.connect() as conn:
        written = conn.execute(
            select(db.contributors.c.agree, db.contributors.c.n_valid, db.contributors.c.gold_pass)
        ).all()
    tally = reputation.Tally()
    for cid in ids:
        tally.add(cid, "v1", agree=1, valid=1)
    tally.add(ids[0], "v1", gold_pass=1)
    sent = {c["id"]: (c["agree"], c["n_valid"], c["gold_pass"]) for c in tally.contributors()}
    assert [tuple(r) for r in written] == [sent[i] for i in ids]
    assert tally.versions() == [{"version": "v1", "gold_pass": 1, "agree": 2}]
    with pytest.raises(ValueError, match="good outcomes"):
        reputation.Tally().add(ids[0], "v1", gold_fail=1).contributors()


def test_the_audit_names_partners_who_land_together_far_more_than_chance(tmp_path: Path) -> None:
    engine = db.make_engine(str(tmp_path / "p.db"))
    upgrade(engine)
    with db.begin_write(engine) as conn:
        ds = conn.execute(
            insert(db.datasets).values(name="d", source="s").returning(db.datasets.c.id)
        ).scalar_one()
        conn.execute(insert(db.items).values(id=1, dataset_id=ds, uid="0" * 32, shard="s", key="k"))
        task = insert_task(conn, dataset_id=ds, name="t", model="m", unit_size=1)
        units = [
            conn.execute(
                insert(db.units)
                .values(task_id=task, seq=k, first_item=1, last_item=1, n_items=1, state="verified", target=2)
                .returning(db.units.c.id)
            ).scalar_one()
            for k in range(100)
        ]
        people = {}
        for name in ("ann", "ben", "cy", "dee"):
            cid = conn.execute(
                insert(db.contributors).values(name=name).returning(db.contributors.c.id)
            ).scalar_one()
            aid = conn.execute(
                insert(db.agents)
                .values(contributor_id=cid, name="a", token_hash=name * 16, rate_per_minute=1, daily_quota=1)
                .returning(db.agents.c.id)
            ).scalar_one()
            people[name] = (cid, aid)
        # ann and ben always together (8 units); cy and dee spread over the rest, meeting once
        together = {"ann": units[:8], "ben": units[:8], "cy": units[10:18], "dee": units[17:25]}
        for name, its in together.items():
            cid, aid = people[name]
            for u in its:
                rid = conn.execute(
                    insert(db.replicas)
                    .values(
                        unit_id=u,
                        task_id=task,
                        contributor_id=cid,
                        agent_id=aid,
                        seed=0,
                        gold_items=[],
                        state="valid",
                        deadline=db.utcnow(),
                    )
                    .returning(db.replicas.c.id)
                ).scalar_one()
                conn.execute(
                    insert(db.submissions).values(
                        replica_id=rid,
                        agent_id=aid,
                        contributor_id=cid,
                        unit_id=u,
                        idempotency_key=f"k{rid}",
                        model_fingerprint="f",
                        agent_version="v",
                        scores=b"",
                        statuses={},
                        gold_ok=True,
                        state="valid",
                    )
                )
    with engine.connect() as conn:
        lines = links.frequent_partners(conn)
    assert len(lines) == 1 and "'ann' and 'ben' agreed on 8 units" in lines[0]
