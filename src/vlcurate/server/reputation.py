"""Reputation from hidden checks and agreement, the pause rules, and what happens when fraud is
found after payment (credits for unaudited results are reversed and their units reopened)."""

from __future__ import annotations

import random
from collections import Counter

from sqlalchemy import and_, delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from vlcurate.server import db, ledger

GOLD_FAILS_TO_PAUSE = 2  # fair attention checks: fail twice before being paused
MIN_DISAGREE_TO_PAUSE = 3
REJECTED_TO_PAUSE = 10
# Rows per agent version in version_stats: each update goes to a random one (see db.version_stats).
VERSION_SHARDS = 16


def version_shard() -> int:
    return random.randrange(VERSION_SHARDS)


def reputation(gold_pass: int, gold_fail: int, agree: int, disagree: int) -> float:
    """Share of passed checks with a Laplace prior: 0.5 for a newcomer, towards 1 for good work."""
    return (gold_pass + agree + 1) / (gold_pass + gold_fail + agree + disagree + 2)


def record(
    conn: Connection,
    contributor_id: int | list[int],
    version: str | list[str],
    *,
    gold_pass: int = 0,
    gold_fail: int = 0,
    agree: int = 0,
    disagree: int = 0,
    valid: int = 0,
    rejected: int = 0,
) -> None:
    """Add outcomes to contributors' and agent versions' tallies; a bad outcome ends a streak.

    Takes one contributor or several with the same outcome (a unit's agreeing group) in one statement.
    """
    C = db.contributors
    ids = contributor_id if isinstance(contributor_id, list) else [contributor_id]
    values: dict[str, object] = {}
    for name, add in (
        ("gold_pass", gold_pass),
        ("gold_fail", gold_fail),
        ("agree", agree),
        ("disagree", disagree),
        ("rejected", rejected),
        ("n_valid", valid),
    ):
        if add:
            values[name] = C.c[name] + add
    if gold_fail or disagree:
        values["valid_streak"] = 0
    elif valid:
        values["valid_streak"] = C.c.valid_streak + valid
    if values:
        conn.execute(update(C).where(C.c.id.in_(ids)).values(**values))
    if gold_pass or gold_fail or agree or disagree:
        versions = version if isinstance(version, list) else [version]
        for v, n in Counter(versions).items():
            _bump_version(conn, v, gold_pass * n, gold_fail * n, agree * n, disagree * n)


def _bump_version(
    conn: Connection, version: str, gold_pass: int, gold_fail: int, agree: int, disagree: int
) -> None:
    V = db.version_stats
    dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
    stmt = dialect_insert(V).values(
        version=version,
        shard=version_shard(),
        gold_pass=gold_pass,
        gold_fail=gold_fail,
        agree=agree,
        disagree=disagree,
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[V.c.version, V.c.shard],
            set_={
                "gold_pass": V.c.gold_pass + gold_pass,
                "gold_fail": V.c.gold_fail + gold_fail,
                "agree": V.c.agree + agree,
                "disagree": V.c.disagree + disagree,
            },
        )
    )


def pause_reason(gold_fail: int, agree: int, disagree: int, rejected: int, last: str = "") -> str | None:
    if gold_fail >= GOLD_FAILS_TO_PAUSE:
        return f"failed {gold_fail} hidden checks with known answers{last}"
    if disagree >= MIN_DISAGREE_TO_PAUSE and disagree > agree:
        return f"disagreed with the other replicas on {disagree} units (agreed on {agree}){last}"
    if rejected >= REJECTED_TO_PAUSE:
        return f"sent {rejected} malformed or replayed submissions{last}"
    return None


def check_pause(conn: Connection, contributor_id: int, last: str = "") -> str | None:
    """Pause the contributor if a rule says so; returns the reason when it was paused now."""
    C = db.contributors
    row = conn.execute(select(C).where(C.c.id == contributor_id)).one()
    if row.paused:
        return None
    reason = pause_reason(row.gold_fail, row.agree, row.disagree, row.rejected, last)
    if reason is None:
        return None
    pause(conn, contributor_id, reason)
    return reason


def pause(conn: Connection, contributor_id: int, reason: str) -> int:
    """Pause, then reverse every credit that rested on this contributor's word alone; returns how many."""
    C = db.contributors
    conn.execute(
        update(C)
        .where(C.c.id == contributor_id)
        .values(paused=True, pause_reason=reason, paused_at=db.utcnow())
    )
    return reverse_unaudited(conn, contributor_id, f"reversed: contributor paused ({reason})")


def reverse_unaudited(conn: Connection, contributor_id: int, reason: str) -> int:
    L, U = db.ledger, db.units
    reversed_ids = select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))
    credits = conn.execute(
        select(L)
        .join(U, U.c.id == L.c.unit_id)
        .where(
            L.c.contributor_id == contributor_id,
            L.c.kind == "credit",
            U.c.single_trusted.is_(True),
            U.c.state == "verified",
            L.c.id.not_in(reversed_ids),
        )
        .order_by(L.c.id)
    ).all()
    for c in credits:
        ledger.reverse(conn, c, reason)
        unit = conn.execute(select(U).where(U.c.id == c.unit_id)).one()
        _reopen(conn, unit, c.submission_id)
    return len(credits)


def _reopen(conn: Connection, unit: object, submission_id: int) -> None:
    """Send a unit verified on a now-distrusted word alone back to the queue at full quorum."""
    U, S, R, G = db.units, db.submissions, db.replicas, db.gold
    task = conn.execute(select(db.tasks.c.quorum).where(db.tasks.c.id == unit.task_id)).one()  # type: ignore[attr-defined]
    sub = conn.execute(select(S.c.replica_id).where(S.c.id == submission_id)).one()
    conn.execute(update(S).where(S.c.id == submission_id).values(state="invalid"))
    conn.execute(update(R).where(R.c.id == sub.replica_id).values(state="invalid"))
    conn.execute(
        update(U)
        .where(U.c.id == unit.id)  # type: ignore[attr-defined]
        .values(
            state="open",
            target=task.quorum,
            issued=0,
            single_trusted=False,
            verified_scores=None,
            verified_status=None,
            verified_at=None,
        )
    )
    conn.execute(
        delete(G).where(
            and_(
                G.c.task_id == unit.task_id,  # type: ignore[attr-defined]
                G.c.source == "verified",
                G.c.item_id.between(unit.first_item, unit.last_item),  # type: ignore[attr-defined]
            )
        )
    )
