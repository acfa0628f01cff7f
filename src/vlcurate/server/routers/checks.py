"""Operators' hidden checks: the ones retired because trusted contributors disputed their answer and
the pinned model no longer stands by it (they grade nobody now; look at them, fix the answer key)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vlcurate.server import db, schemas
from vlcurate.server.deps import AdminDep, EngineDep

router = APIRouter(prefix="/api/v1/checks", tags=["operators"])


@router.get("/retired", response_model=list[schemas.RetiredCheckOut])
def retired(engine: EngineDep, _: AdminDep) -> list[schemas.RetiredCheckOut]:
    """Retired hidden checks, oldest first, with the answer they had and why they were retired."""
    g, t, i = db.gold, db.tasks, db.items
    with engine.connect() as conn:
        rows = conn.execute(
            select(
                g.c.task_id,
                t.c.name.label("task"),
                g.c.item_id,
                i.c.uid,
                g.c.score,
                g.c.status,
                g.c.source,
                g.c.retired_at,
                g.c.retired_reason,
            )
            .join(t, t.c.id == g.c.task_id)
            .join(i, i.c.id == g.c.item_id)
            .where(g.c.retired_at.is_not(None))
            .order_by(g.c.retired_at, g.c.id)
        ).all()
    return [
        schemas.RetiredCheckOut.model_validate({**r._mapping, "retired_at": db.aware(r.retired_at)})
        for r in rows
    ]
