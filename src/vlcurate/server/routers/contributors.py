"""Operators' contributors: pause one (reversing every credit that rested on its word) or lift a
pause after review. The public list of contributors is in `public`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from sqlalchemy import select, update

from vlcurate.server import db, reputation, schemas
from vlcurate.server.deps import AdminDep, EngineDep
from vlcurate.server.errors import NotFound

router = APIRouter(prefix="/api/v1/contributors", tags=["operators"])
ContributorId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]


def _exists(conn: Any, contributor_id: int) -> None:
    c = db.contributors
    if conn.execute(select(c.c.id).where(c.c.id == contributor_id)).first() is None:
        raise NotFound(f"no contributor {contributor_id}")


@router.post("/{contributor_id}/pause", response_model=schemas.PauseOut)
def pause(
    contributor_id: ContributorId, req: schemas.PauseIn, engine: EngineDep, _: AdminDep
) -> schemas.PauseOut:
    with db.begin_write(engine) as conn:
        _exists(conn, contributor_id)
        reversed_n = reputation.pause(conn, contributor_id, f"paused by an operator: {req.reason}")
    return schemas.PauseOut(contributor_id=contributor_id, paused=True, reversed_credits=reversed_n)


@router.post("/{contributor_id}/unpause", response_model=schemas.UnpauseOut)
def unpause(contributor_id: ContributorId, engine: EngineDep, _: AdminDep) -> schemas.UnpauseOut:
    C = db.contributors
    with db.begin_write(engine) as conn:
        _exists(conn, contributor_id)
        conn.execute(
            update(C)
            .where(C.c.id == contributor_id)
            .values(paused=False, pause_reason=None, paused_at=None, gold_fail=0, disagree=0, rejected=0)
        )
    return schemas.UnpauseOut(contributor_id=contributor_id, paused=False)
