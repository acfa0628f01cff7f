"""Operators' tasks: pin a model to a dataset and cut it into units; anyone may list them (a model
given as a path shows the public only its last part)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vlcurate.server import db, ingest, queries, schemas
from vlcurate.server.deps import AdminDep, EngineDep, OperatorView, PlatformDep

router = APIRouter(prefix="/api/v1/tasks", tags=["operators"])


@router.post("", status_code=201, response_model=schemas.TaskOut)
def create_task(req: schemas.TaskCreate, p: PlatformDep, _: AdminDep) -> schemas.TaskOut:
    out = ingest.create_task(p.engine, req)
    p.forget_tasks()
    return out


@router.get("", response_model=list[schemas.TaskOut])
def list_tasks(engine: EngineDep, operator: OperatorView) -> list[schemas.TaskOut]:
    """All tasks; the model exactly as given only with the operator token."""
    with engine.connect() as conn:
        ids = conn.execute(select(db.tasks.c.id).order_by(db.tasks.c.id)).scalars().all()
    out = [ingest.task_out(engine, i) for i in ids]
    return out if operator else [t.model_copy(update={"model": queries.public_model(t.model)}) for t in out]
