"""Players: a contributor (one balance, one ledger, the same account links as agents) with a game
login: as a guest, with a platform agent token, or as a Telegram Mini App user. Every login hands
out a player token (`vlp_...`, shown once, stored as a hash); logging in again as the same account
replaces it."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection, Engine

from vlcurate.server import db
from vlcurate.server.auth import agent_for_token
from vlcurate.server.errors import Forbidden, Unauthorized
from vlcurate.server.game.telegram import TelegramUser
from vlcurate.server.tokens import hash_token, new_token

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class Player:
    id: int
    contributor_id: int
    name: str
    kind: str
    origin: str
    paused: bool
    pause_reason: str | None


def clean_name(name: str | None, fallback: str) -> str:
    """A display name as plain text: control characters removed, at most 40 characters."""
    text = _CONTROL.sub("", name or "").strip()[:40]
    return text or fallback


def _player(row: Any) -> Player:
    return Player(
        row.id, row.contributor_id, row.display_name, row.kind, row.origin, bool(row.paused), row.pause_reason
    )


def _select() -> Any:
    P, C = db.game_players, db.contributors
    return select(P, C.c.paused, C.c.pause_reason).join(C, C.c.id == P.c.contributor_id)


def player_for_token(conn: Connection, token: str) -> Player:
    if not token.startswith("vlp_"):
        raise Unauthorized("not a player token (log in at /api/v1/game/login/...)")
    row = conn.execute(_select().where(db.game_players.c.token_hash == hash_token(token))).first()
    if row is None:
        raise Unauthorized("unknown player token")
    return _player(row)


def player_by_id(conn: Connection, player_id: int) -> Player:
    row = conn.execute(_select().where(db.game_players.c.id == player_id)).first()
    if row is None:
        raise Unauthorized("unknown player")
    return _player(row)


def _new_player(
    conn: Connection, contributor_id: int, kind: str, origin: str, name: str, **extra: Any
) -> int:
    pid = conn.execute(
        insert(db.game_players)
        .values(
            contributor_id=contributor_id,
            kind=kind,
            origin=origin,
            token_hash=hash_token(new_token("vlp")),  # replaced by the caller's token below
            display_name=name,
            **extra,
        )
        .returning(db.game_players.c.id)
    ).scalar_one()
    conn.execute(insert(db.game_reliability).values(player_id=pid, updated_at=db.utcnow()))
    return int(pid)


def _new_contributor(conn: Connection, prefix: str) -> int:
    return int(
        conn.execute(
            insert(db.contributors)
            .values(name=f"{prefix}-{secrets.token_hex(6)}")
            .returning(db.contributors.c.id)
        ).scalar_one()
    )


def _issue(conn: Connection, player_id: int) -> str:
    token = new_token("vlp")
    conn.execute(
        update(db.game_players).where(db.game_players.c.id == player_id).values(token_hash=hash_token(token))
    )
    return token


def guest_login(engine: Engine, name: str | None) -> tuple[Player, str]:
    with db.begin_write(engine) as conn:
        cid = _new_contributor(conn, "guest")
        pid = _new_player(conn, cid, "guest", "human", clean_name(name, "guest"))
        token = _issue(conn, pid)
        return player_by_id(conn, pid), token


def token_login(engine: Engine, agent_token: str, origin: str) -> tuple[Player, str]:
    """Play as the contributor a platform agent token belongs to (`origin`: human or agent)."""
    with db.begin_write(engine) as conn:
        caller = agent_for_token(conn, agent_token)
        if caller.paused:
            raise Forbidden(f"this contributor is paused: {caller.pause_reason}")
        P = db.game_players
        row = conn.execute(select(P.c.id).where(P.c.contributor_id == caller.contributor_id)).first()
        if row is None:
            pid = _new_player(
                conn, caller.contributor_id, "token", origin, clean_name(caller.contributor, "player")
            )
        else:
            pid = int(row.id)
            conn.execute(update(P).where(P.c.id == pid).values(origin=origin))
        token = _issue(conn, pid)
        return player_by_id(conn, pid), token


def telegram_login(engine: Engine, user: TelegramUser) -> tuple[Player, str]:
    with db.begin_write(engine) as conn:
        P = db.game_players
        row = conn.execute(select(P.c.id).where(P.c.telegram_id == user.id)).first()
        if row is None:
            cid = _new_contributor(conn, "tg")
            pid = _new_player(
                conn, cid, "telegram", "human", clean_name(user.name, "player"), telegram_id=user.id
            )
        else:
            pid = int(row.id)
        token = _issue(conn, pid)
        return player_by_id(conn, pid), token
