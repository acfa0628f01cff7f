"""Telegram Mini App login: validate the signed `initData` string a Mini App page receives.

Telegram's specification (core.telegram.org/bots/webapps, "Validating data received via the Mini
App"): the data-check-string is every field but `hash`, as `key=value`, sorted by key, joined by
newlines; secret_key = HMAC-SHA256(key="WebAppData", msg=bot_token); the data is genuine when
hex(HMAC-SHA256(key=secret_key, msg=data_check_string)) equals `hash`. `auth_date` (Unix seconds)
must be recent, or a captured string could be replayed for ever.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl

from vlcurate.server.errors import Unauthorized


@dataclass(frozen=True)
class TelegramUser:
    id: int
    name: str
    auth_date: int


def secret_key(bot_token: str) -> bytes:
    return hmac.new(b"WebAppData", bot_token.encode(), hashlib.sha256).digest()


def sign(fields: dict[str, str], bot_token: str) -> str:
    """The `hash` Telegram would attach to `fields` (what tests and local tools sign with)."""
    check = "\n".join(f"{k}={v}" for k, v in sorted(fields.items()))
    return hmac.new(secret_key(bot_token), check.encode(), hashlib.sha256).hexdigest()


def validate(init_data: str, bot_token: str, *, max_age_s: int, now: float | None = None) -> TelegramUser:
    """The Telegram user `init_data` vouches for, or a 401 that says what is wrong with it."""
    try:
        pairs = parse_qsl(init_data, keep_blank_values=True, strict_parsing=True)
    except ValueError as exc:
        raise Unauthorized(f"Telegram initData is not a query string: {exc}") from exc
    fields: dict[str, str] = {}
    for k, v in pairs:
        if k in fields:
            raise Unauthorized(f"Telegram initData repeats the field {k!r}")
        fields[k] = v
    given = fields.pop("hash", None)
    if not given:
        raise Unauthorized("Telegram initData has no hash")
    if not hmac.compare_digest(sign(fields, bot_token), given.lower()):
        raise Unauthorized("Telegram initData signature does not match (forged, or signed for another bot)")
    try:
        auth_date = int(fields.get("auth_date", ""))
    except ValueError as exc:
        raise Unauthorized("Telegram initData has no valid auth_date") from exc
    now = time.time() if now is None else now
    if auth_date > now + 60:
        raise Unauthorized("Telegram initData auth_date is in the future")
    if now - auth_date > max_age_s:
        raise Unauthorized(
            f"Telegram initData is stale: signed {int(now - auth_date)} s ago (at most {max_age_s} s); "
            "reopen the Mini App"
        )
    try:
        user = json.loads(fields.get("user", ""))
        uid = int(user["id"])
    except (ValueError, KeyError, TypeError) as exc:
        raise Unauthorized("Telegram initData has no valid user") from exc
    name = str(user.get("username") or user.get("first_name") or f"tg{uid}")[:100]
    return TelegramUser(uid, name, auth_date)
