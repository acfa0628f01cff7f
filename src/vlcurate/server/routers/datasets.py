"""Operators' datasets: register a source of image-text pairs; anyone may list them (operators see
where each one is read from, the public does not)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import select

from vlcurate.server import db, ingest, schemas
from vlcurate.server.deps import AdminDep, EngineDep, OperatorView

router = APIRouter(prefix="/api/v1/datasets", tags=["operators"])


@router.post("", status_code=201, response_model=schemas.DatasetOut)
def create_dataset(req: schemas.DatasetCreate, engine: EngineDep, _: AdminDep) -> schemas.DatasetOut:
    return ingest.create_dataset(engine, req)


@router.get("", response_model=list[schemas.DatasetOut], response_model_exclude_none=True)
def list_datasets(engine: EngineDep, operator: OperatorView) -> list[schemas.DatasetOut]:
    """All datasets; `source` (a server path) only with the operator token."""
    with engine.connect() as conn:
        rows = conn.execute(select(db.datasets).order_by(db.datasets.c.id)).all()
    out = [schemas.DatasetOut.model_validate(r._mapping) for r in rows]
    return out if operator else [d.model_copy(update={"source": None}) for d in out]
