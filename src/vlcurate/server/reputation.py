"""Reputation from hidden checks and agreement, the pause rules, and what happens when fraud is
found after payment: every credit that rested on the paused contributor's word is reversed (its
own, and its quorum partners' on the same units), and those units go back to the queue."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, update
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


_COUNTS = ("gold_pass", "gold_fail", "agree", "disagree", "rejected", "n_valid")
_VERSION_COUNTS = ("gold_pass", "gold_fail", "agree", "disagree")


@dataclass
class Tally:
    """Reputation deltas, added up before they are written: the one place that says which outcome
    moves which counter. `record` writes one at once; the PostgreSQL fast path (`cycle.fast`) sends
    `contributors()`, `versions()` and `points` to `vlc_apply`, which adds them in its transaction."""

    by_contributor: dict[int, dict[str, float]] = field(default_factory=dict)
    by_version: dict[str, dict[str, int]] = field(default_factory=dict)
    streak_broken: set[int] = field(default_factory=set)

    def add(
        self,
        contributor_id: int,
        version: str,
        *,
        points: float = 0.0,
        gold_pass: int = 0,
        gold_fail: int = 0,
        agree: int = 0,
        disagree: int = 0,
        valid: int = 0,
        rejected: int = 0,
    ) -> Tally:
        c = self.by_contributor.setdefault(contributor_id, dict.fromkeys(("points", *_COUNTS), 0))
        for name, n in zip(_COUNTS, (gold_pass, gold_fail, agree, disagree, rejected, valid), strict=True):
            c[name] += n
        c["points"] += points
        if gold_fail or disagree:  # a bad outcome ends a streak
            self.streak_broken.add(contributor_id)
        if gold_pass or gold_fail or agree or disagree:
            v = self.by_version.setdefault(version, dict.fromkeys(_VERSION_COUNTS, 0))
            for name, n in zip(_VERSION_COUNTS, (gold_pass, gold_fail, agree, disagree), strict=True):
                v[name] += n
        return self

    def contributors(self) -> list[dict[str, Any]]:
        """Per contributor: points, gold_pass, agree, n_valid (the good outcomes `vlc_apply` adds)."""
        if self.streak_broken or any(
            c["gold_fail"] or c["disagree"] or c["rejected"] for c in self.by_contributor.values()
        ):
            raise ValueError("the fast path only adds good outcomes")
        keys = ("points", "gold_pass", "agree", "n_valid")
        return [  # in id order, so two transactions take the contributors' row locks alike
            {"id": cid, **{k: c[k] for k in keys}}
            for cid, c in sorted(self.by_contributor.items())
            if any(c[k] for k in keys)
        ]

    def versions(self) -> list[dict[str, Any]]:
        """Per agent version that moved, in one order (two transactions take the rows' locks alike)."""
        return [
            {"version": v, "gold_pass": d["gold_pass"], "agree": d["agree"]}
            for v, d in sorted(self.by_version.items())
            if any(d.values())
        ]

    def apply(self, conn: Connection) -> None:
        """Write the deltas: one UPDATE per distinct outcome (a unit's agreeing group is one)."""
        C = db.contributors
        same: dict[tuple[Any, ...], list[int]] = {}
        for cid, c in sorted(self.by_contributor.items()):
            key = (*(c[name] for name in ("points", *_COUNTS)), cid in self.streak_broken)
            same.setdefault(key, []).append(cid)
        for (points, *counts, broken), ids in same.items():
            values: dict[str, object] = {
                name: C.c[name] + int(n) for name, n in zip(_COUNTS, counts, strict=True) if n
            }
            if points:
                values["points"] = C.c.points + points
            n_valid = counts[_COUNTS.index("n_valid")]
            if broken:
                values["valid_streak"] = 0
            elif n_valid:
                values["valid_streak"] = C.c.valid_streak + int(n_valid)
            if values:
                conn.execute(update(C).where(C.c.id.in_(ids)).values(**values))
        for v, d in sorted(self.by_version.items()):
            if any(d.values()):
                _bump_version(conn, v, d["gold_pass"], d["gold_fail"], d["agree"], d["disagree"])


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

    Takes one contributor or several with the same outcome (a unit's agreeing group).
    """
    ids = contributor_id if isinstance(contributor_id, list) else [contributor_id]
    versions = version if isinstance(version, list) else [version] * len(ids)
    tally = Tally()
    for cid, v in zip(ids, versions, strict=True):
        tally.add(
            cid,
            v,
            gold_pass=gold_pass,
            gold_fail=gold_fail,
            agree=agree,
            disagree=disagree,
            valid=valid,
            rejected=rejected,
        )
    tally.apply(conn)


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
    """Pause, end its leases and pending work, and reverse every credit that rested on its word
    (see `reverse_rested_on`); returns how many credits were reversed."""
    C, R, S, U = db.contributors, db.replicas, db.submissions, db.units
    conn.execute(
        update(C)
        .where(C.c.id == contributor_id)
        .values(paused=True, pause_reason=reason, paused_at=db.utcnow())
    )
    now = db.utcnow()
    # Its leases end and its pending results stop counting as votes.
    for (unit_id,) in conn.execute(
        select(R.c.unit_id).where(
            R.c.contributor_id == contributor_id, R.c.state.in_(("leased", "submitted"))
        )
    ).all():
        conn.execute(update(U).where(U.c.id == unit_id, U.c.issued > 0).values(issued=U.c.issued - 1))
    conn.execute(
        update(R)
        .where(R.c.contributor_id == contributor_id, R.c.state == "leased")
        .values(state="released", finished_at=now)
    )
    pending = select(S.c.replica_id).where(S.c.contributor_id == contributor_id, S.c.state == "pending")
    conn.execute(
        update(R)
        .where(R.c.id.in_(pending), R.c.state == "submitted")
        .values(state="invalid", finished_at=now)
    )
    conn.execute(
        update(S).where(S.c.contributor_id == contributor_id, S.c.state == "pending").values(state="invalid")
    )
    return reverse_rested_on(conn, contributor_id, f"reversed: contributor paused ({reason})")


def reverse_rested_on(conn: Connection, contributor_id: int, reason: str) -> int:
    """Reverse every unreversed credit on each verified unit whose agreeing group included this
    contributor (alone or in a quorum, paid or linked and unpaid), and reopen those units: the
    other members' results go back to pending and are paid again only if the unit re-verifies with
    them. Returns how many credits were reversed."""
    S, U = db.submissions, db.units
    unit_ids = (
        conn.execute(
            select(S.c.unit_id)
            .join(U, U.c.id == S.c.unit_id)
            .where(S.c.contributor_id == contributor_id, S.c.state == "valid", U.c.state == "verified")
            .distinct()
            .order_by(S.c.unit_id)
        )
        .scalars()
        .all()
    )
    n = 0
    for unit_id in unit_ids:
        n += _reverse_unit(conn, unit_id, contributor_id, reason)
    return n


def _reverse_unit(conn: Connection, unit_id: int, culprit: int, reason: str) -> int:
    L, S, R, U = db.ledger, db.submissions, db.replicas, db.units
    reversed_ids = select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))
    credits = conn.execute(
        select(L)
        .where(L.c.unit_id == unit_id, L.c.kind == "credit", L.c.id.not_in(reversed_ids))
        .order_by(L.c.id)
    ).all()
    for c in credits:
        ledger.reverse(conn, c, reason)
    members = conn.execute(
        select(S.c.id, S.c.replica_id, S.c.contributor_id).where(S.c.unit_id == unit_id, S.c.state == "valid")
    ).all()
    now = db.utcnow()
    back = 0
    for m in members:
        if m.contributor_id == culprit:
            conn.execute(update(S).where(S.c.id == m.id).values(state="invalid"))
            conn.execute(update(R).where(R.c.id == m.replica_id).values(state="invalid", finished_at=now))
        else:
            conn.execute(update(S).where(S.c.id == m.id).values(state="pending"))
            conn.execute(update(R).where(R.c.id == m.replica_id).values(state="submitted"))
            back += 1
    task = conn.execute(
        select(db.tasks.c.quorum).join(U, U.c.task_id == db.tasks.c.id).where(U.c.id == unit_id)
    ).one()
    conn.execute(
        update(U)
        .where(U.c.id == unit_id)
        .values(
            state="open",
            target=max(task.quorum, back + 1),
            issued=back,
            single_trusted=False,
            verified_scores=None,
            verified_status=None,
            verified_at=None,
        )
    )
    return len(credits)
