"""Opaque public ids: what players see instead of row ids (random, so none can be guessed or walked)."""

from __future__ import annotations

import secrets


def new_public_id() -> str:
    """128 random bits as 32 hex digits."""
    return secrets.token_hex(16)


def looks_like_public_id(value: str) -> bool:
    return len(value) == 32 and all(c in "0123456789abcdef" for c in value)
