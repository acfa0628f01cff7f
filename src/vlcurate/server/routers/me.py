"""Agents' own standing: who the token belongs to, reputation, points and quota left."""

from __future__ import annotations

from fastapi import APIRouter

from vlcurate.server import schemas, submissions
from vlcurate.server.deps import Agent, PlatformDep

router = APIRouter(tags=["agents"])


@router.get("/api/v1/me", response_model=schemas.Me)
def me(p: PlatformDep, caller: Agent) -> schemas.Me:
    return submissions.me(p, caller)
