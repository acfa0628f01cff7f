"""The append-only reward ledger: credits for validated results and reversals that point at the
credit they undo. Balances live in `contributors.points`, updated in the same transaction as the
entry; `audit` checks that the two agree, that nothing was paid twice, and that no credit still
stands on a unit whose verified result rests on a paused contributor's word."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from vlcurate.server import db


def credit_group(
    conn: Connection, members: list[Any], *, unit_id: int, points: float, pairs: int, reason: str
) -> None:
    """Credit every agreeing replica of a unit at once: one insert, one balance update."""
    now = db.utcnow()
    conn.execute(
        insert(db.ledger),
        [
            dict(
                contributor_id=m.contributor_id,
                agent_id=m.agent_id,
                submission_id=m.id,
                unit_id=unit_id,
                kind="credit",
                points=points,
                pairs=pairs,
                reason=reason,
                reverses_id=None,
                created_at=now,
            )
            for m in members
        ],
    )
    C = db.contributors
    conn.execute(
        update(C).where(C.c.id.in_([m.contributor_id for m in members])).values(points=C.c.points + points)
    )


def reverse(conn: Connection, credit_row: Any, reason: str) -> int:
    """Undo one credit with a negative entry that references it (at most once: `reverses_id` is unique)."""
    entry = conn.execute(
        insert(db.ledger)
        .values(
            contributor_id=credit_row.contributor_id,
            agent_id=credit_row.agent_id,
            submission_id=credit_row.submission_id,
            unit_id=credit_row.unit_id,
            game_flag_id=credit_row.game_flag_id,
            kind="reversal",
            points=-credit_row.points,
            pairs=-credit_row.pairs,
            reason=reason,
            reverses_id=credit_row.id,
            created_at=db.utcnow(),
        )
        .returning(db.ledger.c.id)
    ).scalar_one()
    conn.execute(
        update(db.contributors)
        .where(db.contributors.c.id == credit_row.contributor_id)
        .values(points=db.contributors.c.points - credit_row.points)
    )
    return int(entry)


def credited_points(conn: Connection, submission_id: int) -> float:
    return float(
        conn.execute(
            select(func.coalesce(func.sum(db.ledger.c.points), 0.0)).where(
                db.ledger.c.submission_id == submission_id
            )
        ).scalar_one()
    )


def audit(conn: Connection) -> list[str]:
    """Every way the ledger could be wrong, as readable problems; an empty list means it balances."""
    problems: list[str] = []
    L, C, S = db.ledger, db.contributors, db.submissions
    sums = dict(
        conn.execute(select(L.c.contributor_id, func.sum(L.c.points)).group_by(L.c.contributor_id)).all()
    )
    for cid, name, points in conn.execute(select(C.c.id, C.c.name, C.c.points)).all():
        if abs(float(sums.get(cid, 0.0) or 0.0) - float(points)) > 1e-6:
            problems.append(f"contributor {name}: balance {points} but ledger sums to {sums.get(cid, 0.0)}")
    reversed_ids = {
        r for (r,) in conn.execute(select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))).all()
    }
    standing: dict[int, int] = {}  # a credit reversed and paid again after re-verification is fine
    for entry_id, sid in conn.execute(
        select(L.c.id, L.c.submission_id).where(L.c.kind == "credit", L.c.submission_id.is_not(None))
    ).all():
        if entry_id not in reversed_ids:
            standing[sid] = standing.get(sid, 0) + 1
    for sid, n in sorted(standing.items()):
        if n > 1:
            problems.append(f"submission {sid} credited {n} times")
    for entry_id, sid, state in conn.execute(
        select(L.c.id, L.c.submission_id, S.c.state)
        .join(S, S.c.id == L.c.submission_id)
        .where(L.c.kind == "credit")
    ).all():
        if state != "valid" and entry_id not in reversed_ids:
            problems.append(f"credit {entry_id} pays submission {sid} which is {state}")
    problems += _resting_on_paused(conn, reversed_ids)
    problems += _game_credits(conn, reversed_ids)
    for entry_id, target, points in conn.execute(
        select(L.c.id, L.c.reverses_id, L.c.points).where(L.c.kind == "reversal")
    ).all():
        orig = conn.execute(select(L.c.kind, L.c.points).where(L.c.id == target)).first()
        if orig is None or orig.kind != "credit" or abs(orig.points + points) > 1e-9:
            problems.append(f"reversal {entry_id} does not mirror a credit (reverses {target})")
    return problems


def _resting_on_paused(conn: Connection, reversed_ids: set[int]) -> list[str]:
    """Unreversed credits on units whose agreeing group includes a paused contributor."""
    L, S, C = db.ledger, db.submissions, db.contributors
    paused_units = {
        unit_id: name
        for unit_id, name in conn.execute(
            select(S.c.unit_id, C.c.name)
            .join(C, C.c.id == S.c.contributor_id)
            .where(C.c.paused.is_(True), S.c.state == "valid")
        ).all()
    }
    if not paused_units:
        return []
    out = []
    for entry_id, unit_id in conn.execute(
        select(L.c.id, L.c.unit_id).where(L.c.kind == "credit", L.c.unit_id.in_(list(paused_units)))
    ).all():
        if entry_id not in reversed_ids:
            out.append(
                f"credit {entry_id} on unit {unit_id} rests on paused contributor {paused_units[unit_id]}"
            )
    return out


def _game_credits(conn: Connection, reversed_ids: set[int]) -> list[str]:
    """GAP: every standing game credit pays one flag, once, and only a flag that earns (a tainted
    image's flag, or an untainted one that independent players confirmed)."""
    L, F = db.ledger, db.game_flags
    out: list[str] = []
    standing: dict[int, int] = {}
    for entry_id, fid, state in conn.execute(
        select(L.c.id, L.c.game_flag_id, F.c.state)
        .join(F, F.c.id == L.c.game_flag_id)
        .where(L.c.kind == "credit")
    ).all():
        if entry_id in reversed_ids:
            continue
        standing[fid] = standing.get(fid, 0) + 1
        if state not in ("tainted", "confirmed"):
            out.append(f"credit {entry_id} pays game flag {fid} which is {state}")
    out += [f"game flag {fid} credited {n} times" for fid, n in sorted(standing.items()) if n > 1]
    return out
