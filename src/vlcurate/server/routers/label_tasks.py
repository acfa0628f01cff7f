"""Operators' label tasks (`vlcurate build --platform`): upload images with their classes and the
trusted labels that become hidden checks; read back the labels a quorum verified."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from vlcurate.server import labels, schemas
from vlcurate.server.deps import AdminDep, EngineDep, PlatformDep

router = APIRouter(prefix="/api/v1/label-tasks", tags=["operators"])


@router.post("", status_code=201, response_model=schemas.LabelTaskOut)
def create_label_task(req: schemas.LabelTaskCreate, p: PlatformDep, _: AdminDep) -> schemas.LabelTaskOut:
    out = labels.create_label_task(p.engine, req)
    p.forget_tasks()
    return out


@router.get("/{task_id}/labels", response_model=schemas.LabelsOut)
def verified_labels(
    task_id: Annotated[int, Path(ge=1, le=schemas.MAX_ID)], engine: EngineDep, _: AdminDep
) -> schemas.LabelsOut:
    """Each image's verified label so far (null until its unit is verified), and the progress."""
    return labels.verified_labels(engine, task_id)
