"""Who is calling: the operator (admin token) or an agent (its bearer token, checked on every call)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, select
from sqlalchemy.engine import Connection

from vlcurate.server import db
from vlcurate.server.errors import Unauthorized
from vlcurate.server.tokens import hash_token


@dataclass(frozen=True)
class Caller:
    agent_id: int
    agent_name: str
    version: str
    contributor_id: int
    contributor: str
    paused: bool
    pause_reason: str | None
    rate_per_minute: int
    daily_quota: int
    quota_day: str | None = None
    quota_used: int = 0
    valid_streak: int = 0
    walkaway_hour: str | None = None
    walkaways: int = 0


def bearer(header: str | None) -> str:
    """The token from an `Authorization: Bearer ...` header, or a 401."""
    if not header:
        raise Unauthorized("missing Authorization header (Bearer token)")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


_a, _c = db.agents, db.contributors
_BY_TOKEN = (
    select(
        _a.c.id,
        _a.c.name,
        _a.c.version,
        _a.c.revoked,
        _a.c.expires_at,
        _a.c.rate_per_minute,
        _a.c.daily_quota,
        _a.c.quota_day,
        _a.c.quota_used,
        _c.c.valid_streak,
        _c.c.id.label("cid"),
        _c.c.name.label("cname"),
        _c.c.paused,
        _c.c.pause_reason,
        _c.c.walkaway_hour,
        _c.c.walkaways,
    )
    .join(_c, _c.c.id == _a.c.contributor_id)
    .where(_a.c.token_hash == bindparam("b_hash"))
)  # built once: it runs on every request


def agent_for_token(conn: Connection, token: str) -> Caller:
    """The agent holding `token`; revoked or unknown tokens are a 401."""
    return caller_from_row(conn.execute(_BY_TOKEN, {"b_hash": hash_token(token)}).first())


def caller_from_row(row: Any) -> Caller:
    """The caller from its agent row (the columns of `_BY_TOKEN`, by attribute), or a 401."""
    if row is None:
        raise Unauthorized("unknown token")
    if row.revoked:
        raise Unauthorized("this token has been revoked")
    if row.expires_at is not None:
        expires = db.aware(row.expires_at)
        if expires <= db.utcnow():
            raise Unauthorized(f"this token expired at {expires.isoformat()}")
    return Caller(
        row.id,
        row.name,
        row.version,
        row.cid,
        row.cname,
        bool(row.paused),
        row.pause_reason,
        row.rate_per_minute,
        row.daily_quota,
        row.quota_day,
        row.quota_used,
        row.valid_streak,
        getattr(row, "walkaway_hour", None),
        getattr(row, "walkaways", 0) or 0,
    )
