"""Points: game credits and reversals in the platform's append-only ledger, and leaderboards.

A credit pays one flag (`ledger.game_flag_id`), to the contributor behind the player, and moves
their balance in the same transaction; a reversal points at the credit it undoes (`ledger.reverse`).
"""

from __future__ import annotations

import datetime as dt
from typing import Literal

from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from vlcurate.server import db, ledger
from vlcurate.server.game.views import LeaderboardOut, LeaderRow

Period = Literal["daily", "weekly", "all"]


def standing_credit(conn: Connection, flag_id: int) -> object | None:
    """The flag's credit that no reversal undid, if any."""
    L = db.ledger
    reversed_ids = select(L.c.reverses_id).where(L.c.reverses_id.is_not(None))
    return conn.execute(
        select(L).where(L.c.game_flag_id == flag_id, L.c.kind == "credit", L.c.id.not_in(reversed_ids))
    ).first()


def credit_flag(conn: Connection, flag_id: int, contributor_id: int, points: float, reason: str) -> bool:
    """Pay a flag once: nothing happens when a standing credit already pays it."""
    if points <= 0 or standing_credit(conn, flag_id) is not None:
        return False
    conn.execute(
        insert(db.ledger).values(
            contributor_id=contributor_id,
            agent_id=None,
            submission_id=None,
            unit_id=None,
            game_flag_id=flag_id,
            kind="credit",
            points=points,
            pairs=1,
            reason=reason,
            reverses_id=None,
            created_at=db.utcnow(),
        )
    )
    C = db.contributors
    conn.execute(update(C).where(C.c.id == contributor_id).values(points=C.c.points + points))
    return True


def reverse_flag(conn: Connection, flag_id: int, reason: str) -> bool:
    row = standing_credit(conn, flag_id)
    if row is None:
        return False
    ledger.reverse(conn, row, reason)
    return True


def session_points(conn: Connection, session_id: int) -> float:
    L, F, SI = db.ledger, db.game_flags, db.game_session_images
    return float(
        conn.execute(
            select(func.coalesce(func.sum(L.c.points), 0.0))
            .join(F, F.c.id == L.c.game_flag_id)
            .join(SI, SI.c.id == F.c.session_image_id)
            .where(SI.c.session_id == session_id)
        ).scalar_one()
    )


def since(period: Period, now: dt.datetime | None = None) -> dt.datetime | None:
    now = now or db.utcnow()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "daily":
        return day
    if period == "weekly":
        return day - dt.timedelta(days=day.weekday())
    return None


def leaderboard(conn: Connection, period: Period, limit: int = 20) -> LeaderboardOut:
    """Game points (credits minus reversals) per player since the start of the UTC day, the ISO
    week (Monday), or ever."""
    L, P = db.ledger, db.game_players
    start = since(period)
    total = func.sum(L.c.points).label("points")
    q = (
        select(P.c.display_name, total)
        .join(P, P.c.contributor_id == L.c.contributor_id)
        .where(L.c.game_flag_id.is_not(None))
        .group_by(P.c.id, P.c.display_name)
        .having(func.sum(L.c.points) > 0)
        .order_by(total.desc(), P.c.id)
        .limit(limit)
    )
    if start is not None:
        q = q.where(L.c.created_at >= start)
    rows = conn.execute(q).all()
    return LeaderboardOut(
        period=period,
        since=start,
        entries=[
            LeaderRow(rank=i + 1, name=r.display_name, points=float(r.points)) for i, r in enumerate(rows)
        ],
    )
