"""The database side of reliability: a player's counts, the model's error rate across the crowd,
the refreshed estimate (after every session and every settled flag) and whether the player earns."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.engine import Connection, Engine

from vlcurate.server import db
from vlcurate.server.game import reliability as rel
from vlcurate.server.game.views import ReliabilityOut

log = logging.getLogger(__name__)


def counts(row: Any) -> rel.Counts:
    return rel.Counts(
        row.n_tainted,
        row.n_tainted_flagged,
        row.n_untainted,
        row.n_untainted_flagged,
        row.n_confirmed,
        row.n_overturned,
    )


def db_key(conn: Connection) -> str:
    """One key per database for the in-process caches: the pool is shared by the engine and the
    engines `db.begin_write` derives from it (a new object on every call)."""
    return f"{id(conn.engine.pool)}:{conn.engine.url}"


Q_TTL_S = 5.0
_Q: dict[str, tuple[float, float]] = {}


def crowd_error_rate(conn: Connection) -> float:
    """q over every player's untainted images and judged flags (`reliability.model_error_rate`);
    an aggregate over all players, so it is computed at most every `Q_TTL_S` per database."""
    key = db_key(conn)
    hit = _Q.get(key)
    now = time.monotonic()
    if hit is not None and now - hit[0] < Q_TTL_S:
        return hit[1]
    q = _crowd_error_rate(conn)
    _Q[key] = (now, q)
    return q


def _crowd_error_rate(conn: Connection) -> float:
    R = db.game_reliability
    row = conn.execute(
        select(
            func.coalesce(func.sum(R.c.n_untainted), 0),
            func.coalesce(func.sum(R.c.n_untainted_flagged), 0),
            func.coalesce(func.sum(R.c.n_confirmed), 0),
            func.coalesce(func.sum(R.c.n_overturned), 0),
            func.coalesce(func.sum(R.c.n_tainted), 0),
            func.coalesce(func.sum(R.c.n_tainted_flagged), 0),
        )
    ).one()
    n_u, f_u, conf, over, n_t, f_t = (int(x) for x in row)
    a = (f_t + 1.0) / (n_t + 2.0)
    return rel.model_error_rate(n_u, f_u, conf, over, a)


PRIOR_TTL_S = 30.0
_PRIORS: dict[str, tuple[float, rel.Prior | None]] = {}
_PRIORS_LOCK = threading.Lock()


_FITTING: set[str] = set()


def crowd_prior(conn: Connection, q: float) -> rel.Prior | None:
    """The crowd's prior (`reliability.fit_prior`) as last fitted; a fit older than `PRIOR_TTL_S` is
    redone in a background thread (it reads every player's counts, so it never runs inside the
    caller's transaction), and until the first fit is done estimates use flat priors."""
    key = db_key(conn)
    now = time.monotonic()
    with _PRIORS_LOCK:
        cached = _PRIORS.get(key)
        if (cached is None or now - cached[0] >= PRIOR_TTL_S) and key not in _FITTING:
            _FITTING.add(key)
            reader = conn.engine.execution_options(vlcurate_write=False)  # never BEGIN IMMEDIATE
            threading.Thread(target=_refit, args=(reader, key, q), name="gap-prior", daemon=True).start()
    return cached[1] if cached is not None else None


def _refit(engine: Engine, key: str, q: float) -> None:
    R = db.game_reliability
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(R).where(R.c.n_tainted > 0)).all()
        prior = rel.fit_prior([counts(r) for r in rows], q)
        with _PRIORS_LOCK:
            _PRIORS[key] = (time.monotonic(), prior)
    except Exception:  # a database gone away (tests, shutdown): the next call tries again
        log.debug("could not fit the crowd's prior", exc_info=True)
    finally:
        with _PRIORS_LOCK:
            _FITTING.discard(key)


def bar(conn: Connection) -> tuple[float, int]:
    """The strictest earning bar any active game sets (reliability is per player, across games)."""
    G = db.game_games
    row = conn.execute(
        select(func.max(G.c.min_skill), func.min(G.c.min_tainted_seen)).where(G.c.state == "active")
    ).one()
    return (0.4 if row[0] is None else float(row[0])), (5 if row[1] is None else int(row[1]))


def refresh(conn: Connection, player_id: int, **add: int) -> tuple[rel.Reliability, bool, str]:
    """Add `add` to the player's counts, re-estimate a and b, store them, and say if they earn."""
    R = db.game_reliability
    if add:
        conn.execute(
            update(R)
            .where(R.c.player_id == player_id)
            .values({k: getattr(R.c, k) + v for k, v in add.items()})
        )
    row = conn.execute(select(R).where(R.c.player_id == player_id)).one()
    c = counts(row)
    q = crowd_error_rate(conn)
    r = rel.estimate(c, q, crowd_prior(conn, q))
    min_skill, min_seen = bar(conn)
    ok, reason = rel.earning(r, c, min_skill=min_skill, min_tainted_seen=min_seen)
    paused = conn.execute(
        select(db.contributors.c.paused, db.contributors.c.pause_reason)
        .join(db.game_players, db.game_players.c.contributor_id == db.contributors.c.id)
        .where(db.game_players.c.id == player_id)
    ).one()
    if paused.paused:
        ok, reason = False, f"not earning: this account is paused ({paused.pause_reason})"
    conn.execute(
        update(R)
        .where(R.c.player_id == player_id)
        .values(a=r.a, a_sd=r.a_sd, b=r.b, b_sd=r.b_sd, earning=ok, reason=reason, updated_at=db.utcnow())
    )
    return r, ok, reason


def current(conn: Connection, player_id: int) -> Any:
    return conn.execute(select(db.game_reliability).where(db.game_reliability.c.player_id == player_id)).one()


def view(row: Any) -> ReliabilityOut:
    return ReliabilityOut(
        detection=round(row.a, 4),
        detection_sd=round(row.a_sd, 4),
        false_alarm=round(row.b, 4),
        false_alarm_sd=round(row.b_sd, 4),
        check_images=row.n_tainted,
        earning=bool(row.earning),
        reason=row.reason or "on probation: no session finished yet",
    )
