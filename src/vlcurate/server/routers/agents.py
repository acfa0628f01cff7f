"""Operators' agents: issue an agent token (anyone may, with open registration) and revoke one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Request

from vlcurate.server import ingest, schemas
from vlcurate.server.deps import AdminDep, EngineDep, SettingsDep, admin

router = APIRouter(prefix="/api/v1/agents", tags=["operators"])


@router.post("", status_code=201, response_model=schemas.AgentToken)
def create_agent(
    req: schemas.AgentCreate,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header()] = None,
) -> schemas.AgentToken:
    if not settings.open_registration:
        admin(request, authorization)
    return ingest.create_agent(engine, req, settings.rate_per_minute, settings.daily_quota)


@router.post("/{agent_id}/revoke", response_model=schemas.RevokeOut)
def revoke(
    agent_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], engine: EngineDep, _: AdminDep
) -> schemas.RevokeOut:
    ingest.revoke_agent(engine, agent_id)
    return schemas.RevokeOut(agent_id=agent_id, revoked=True)
