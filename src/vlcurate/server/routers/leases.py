"""Agents' leases: lease a unit, keep it alive, hand it back, submit (and lease the next one).

`new_lease` and `submit_cycle` are the unit cycle itself. The bare ASGI route (`cycle_route`) calls
them for nearly every request; the FastAPI routes below call the same functions (they declare the
calls for /docs and answer what the bare route passes on). Both take the raw Authorization header
(on PostgreSQL the token is checked inside the same statement that reads the lease) and the
client's address (`origin`), which leasing records to link accounts seen from one place.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Header, Path
from fastapi.responses import Response

from vlcurate.server import cycle, leasing, schemas
from vlcurate.server.auth import bearer
from vlcurate.server.deps import Agent, Origin, PlatformDep, Token, as_json, caller_for, header, limit
from vlcurate.server.platform import Platform
from vlcurate.server.tokens import hash_token

router = APIRouter(prefix="/api/v1/leases", tags=["agents"])
LeaseId = Annotated[int, Path(ge=1, le=schemas.MAX_ID)]

# ---- the unit cycle -----------------------------------------------------------------------------


def new_lease(
    p: Platform, auth: str | None, task_id: int | None, lease_key: str | None, origin: str | None
) -> schemas.Lease | None:
    """`POST /api/v1/leases`: a lease, or None when there is no work for this agent now."""
    caller = limit(p, caller_for(p, auth))
    return leasing.lease(p, caller, task_id, lease_key, origin=origin)


def submit_cycle(
    p: Platform,
    auth: str | None,
    lease_id: int,
    body: schemas.SubmissionIn,
    want_next: bool,
    next_task_id: int | None,
    origin: str | None,
) -> schemas.CycleOut:
    """Submit a lease's results and, if `want_next`, lease the next unit: on PostgreSQL in two round
    trips when nothing needs the general path's decisions, else through `cycle.general`."""
    if p.engine.dialect.name == "postgresql":
        token_hash = hash_token(bearer(auth))
        snap = cycle.snapshot(p, token_hash, lease_id)
        caller = limit(p, cycle.caller_of(snap))
        for attempt in range(2):  # a second look when another replica of the unit came in between
            if attempt:
                snap = cycle.snapshot(p, token_hash, lease_id)
                caller = cycle.caller_of(snap)
            got = cycle.fast(
                p,
                caller,
                snap,
                lease_id,
                body,
                want_next=want_next,
                next_task_id=next_task_id,
                origin=origin,
            )
            if got is not cycle.STALE:
                break
        if isinstance(got, schemas.CycleOut):
            return got
    else:
        caller = limit(p, caller_for(p, auth))
    return cycle.general(
        p,
        caller,
        lease_id,
        body,
        want_next=want_next,
        next_task_id=next_task_id,
        reload_caller=lambda: caller_for(p, auth),
        origin=origin,
    )


# ---- the routes ---------------------------------------------------------------------------------


@router.post("", response_model=schemas.Lease, responses={204: {"description": "no work now"}})
def lease(
    p: PlatformDep,
    token: Token,
    origin: Origin,
    body: Annotated[schemas.LeaseBody, Body()] = None,
    idempotency_key: Annotated[schemas.LeaseKey | None, Header(description="Retry-safe leasing.")] = None,
) -> Response:
    got = new_lease(p, header(token), (body or {}).get("task_id"), idempotency_key, origin)
    return Response(status_code=204) if got is None else as_json(got)


@router.post("/{lease_id}/heartbeat", response_model=schemas.HeartbeatOut)
def heartbeat(lease_id: LeaseId, p: PlatformDep, caller: Agent) -> schemas.HeartbeatOut:
    return leasing.heartbeat(p, caller, lease_id)


@router.delete("/{lease_id}", status_code=204)
def release(lease_id: LeaseId, p: PlatformDep, caller: Agent) -> Response:
    leasing.release(p, caller, lease_id)
    return Response(status_code=204)


@router.post("/{lease_id}/submit", response_model=schemas.SubmissionOut)
def submit(
    lease_id: LeaseId, body: schemas.SubmissionIn, p: PlatformDep, token: Token, origin: Origin
) -> Response:
    return as_json(submit_cycle(p, header(token), lease_id, body, False, None, origin).submission)


@router.post(
    "/{lease_id}/submit-and-lease",
    response_model=schemas.CycleOut,
    description="Submit this lease's results and lease the next unit in one call (BOINC's "
    "scheduler RPC). A retry with the same idempotency_key gets the same answer and the same "
    "next unit, while that lease is active.",
)
def submit_and_lease(
    lease_id: LeaseId, body: schemas.CycleIn, p: PlatformDep, token: Token, origin: Origin
) -> Response:
    return as_json(submit_cycle(p, header(token), lease_id, body, True, body.next_task_id, origin))
