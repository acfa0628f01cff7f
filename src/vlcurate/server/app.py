"""The FastAPI application: operators' and agents' JSON API, the dashboard, and the lease sweeper.

Handlers are plain functions (FastAPI runs them in its thread pool) over the services in
`ingest`, `leasing` and `submissions`; every error those raise becomes a status code with a one-line
`detail`, and a dropped database connection becomes a 503 the agents retry.
"""

import contextlib
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Body, Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy import insert, select, update
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.types import Receive, Scope, Send

from vlcurate import __version__
from vlcurate.server import cycle, db, ingest, leasing, replies, reputation, schemas, submissions
from vlcurate.server.auth import Caller, agent_for_token, bearer
from vlcurate.server.context import Platform
from vlcurate.server.cycle_route import CycleRoute
from vlcurate.server.dashboard import image_media_type, mount_static
from vlcurate.server.dashboard import router as dashboard_router
from vlcurate.server.errors import Forbidden, NotFound, PlatformError, TooMany
from vlcurate.server.migrate import upgrade
from vlcurate.server.settings import ServerSettings
from vlcurate.server.tokens import hash_token, new_token, same

log = logging.getLogger("vlcurate.server")


def _admin_hash(engine: Any, settings: ServerSettings) -> str:
    """The operator token's hash: set from --admin-token, else generated once and printed."""
    with db.begin_write(engine) as conn:
        stored = conn.execute(
            select(db.server_meta.c.value).where(db.server_meta.c.key == "admin_token_hash")
        ).scalar()
        if settings.admin_token:
            h = hash_token(settings.admin_token)
            if stored is None:
                conn.execute(insert(db.server_meta).values(key="admin_token_hash", value=h))
            elif stored != h:
                conn.execute(
                    update(db.server_meta).where(db.server_meta.c.key == "admin_token_hash").values(value=h)
                )
            return h
        if stored is not None:
            return str(stored)
        token = new_token("vlo")
        h = hash_token(token)
        conn.execute(insert(db.server_meta).values(key="admin_token_hash", value=h))
    print(f"vlcurate serve: generated operator token (shown once): {token}", flush=True)
    return h


class PlatformAPI(FastAPI):
    """FastAPI, with the agents' unit-cycle calls sent to `cycle_route` before any of its layers."""

    cycle_route: CycleRoute | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.cycle_route
        if route is not None and (call := CycleRoute.target(scope)) is not None:
            await route(scope, receive, send, call)
        else:
            await super().__call__(scope, receive, send)


def create_app(settings: ServerSettings | None = None) -> FastAPI:
    settings = settings or ServerSettings()
    engine = db.make_engine(settings.db, pool_size=settings.pool_size)
    if settings.migrate:
        upgrade(engine)
    platform = Platform(engine, settings)
    admin_hash = _admin_hash(engine, settings)
    stop = threading.Event()

    def sweeper() -> None:
        while not stop.wait(settings.sweep_seconds):
            try:
                n = leasing.expire_leases(platform)
                if n:
                    log.info("requeued %d expired leases", n)
            except Exception as exc:  # a dropped connection must not kill the sweeper
                log.warning("lease sweep failed: %s", exc)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # A few handler threads. On SQLite they are handed the GIL often: a transaction holding the
        # database's write lock must not wait 5 ms for the GIL each time it needs it while dozens
        # of other threads parse requests (measured: it halved throughput and made p99 seconds
        # long). PostgreSQL's hot path holds no lock in the server process, and Python's default
        # (5 ms) costs less switching: 373 against 327 unit cycles/s (50 agents, closed loop).
        anyio.to_thread.current_default_thread_limiter().total_tokens = settings.handler_threads
        sqlite = engine.dialect.name == "sqlite"
        sys.setswitchinterval(settings.switch_interval or (0.0005 if sqlite else 0.005))
        t = threading.Thread(target=sweeper, name="lease-sweeper", daemon=True)
        t.start()
        # What start-up built (modules, the app, SQLAlchemy's metadata: ~150,000 objects) lives as
        # long as the process: out of the collector's reach, so a full collection, which pauses the
        # whole worker, walks only what requests leave behind.
        gc.collect()
        gc.freeze()
        yield
        stop.set()
        engine.dispose()

    app = PlatformAPI(
        title="vlcurate DataAgent platform",
        version=__version__,
        lifespan=lifespan,
        # FastAPI's own body limit (413 for declared and streamed bodies alike).
        max_body_size=settings.max_body_bytes,
        # Native OpenTelemetry checks the global providers on every request (a measurable share of
        # a unit cycle); it is on only when asked for.
        telemetry=None
        if settings.telemetry
        else {"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        description="Hands out scoring work, verifies it (quorum, hidden checks), pays valid work.",
    )
    app.state.engine = engine
    app.state.platform = platform
    app.state.settings = settings

    @app.exception_handler(PlatformError)
    async def _platform_error(_: Request, exc: PlatformError) -> JSONResponse:
        return replies.platform_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return replies.invalid(exc.errors())

    @app.exception_handler(OperationalError)
    @app.exception_handler(DBAPIError)
    async def _db_down(_: Request, exc: Exception) -> JSONResponse:
        return replies.database_down(exc)

    def admin(authorization: Annotated[str | None, Header()] = None) -> None:
        if not same(hash_token(bearer(authorization)), admin_hash):
            raise Forbidden("this needs the operator token")

    def agent_no_limit(authorization: Annotated[str | None, Header()] = None) -> Caller:
        # One round trip for the token check: no BEGIN/ROLLBACK around a single read.
        with platform.autocommit.connect() as conn:
            return agent_for_token(conn, bearer(authorization))

    def limit(caller: Caller) -> Caller:
        wait = platform.limiter.check(caller.agent_id, caller.rate_per_minute)
        if wait > 0:
            raise TooMany(f"rate limit of {caller.rate_per_minute} requests/minute exceeded", wait)
        return caller

    def agent(authorization: Annotated[str | None, Header()] = None) -> Caller:
        return limit(agent_no_limit(authorization))

    def submit_maybe_next(
        auth: str | None, lease_id: int, body: schemas.SubmissionIn, want_next: bool, next_task_id: int | None
    ) -> schemas.CycleOut:
        if fast_path:
            token_hash = hash_token(bearer(auth))
            snap = cycle.snapshot(platform, token_hash, lease_id)
            caller = limit(cycle.caller_of(snap))
            for attempt in range(2):  # a second look when another replica of the unit came in between
                if attempt:
                    snap = cycle.snapshot(platform, token_hash, lease_id)
                    caller = cycle.caller_of(snap)
                got = cycle.fast(
                    platform, caller, snap, lease_id, body, want_next=want_next, next_task_id=next_task_id
                )
                if got is not cycle.STALE:
                    break
            if isinstance(got, schemas.CycleOut):
                return got
        else:
            caller = agent(auth)
        return cycle.general(
            platform,
            caller,
            lease_id,
            body,
            want_next=want_next,
            next_task_id=next_task_id,
            reload_caller=lambda: agent_no_limit(auth),
        )

    def new_lease(auth: str | None, task_id: int | None, lease_key: str | None) -> schemas.Lease | None:
        return leasing.lease(platform, agent(auth), task_id, lease_key)

    fast_path = engine.dialect.name == "postgresql"
    # The unit-cycle calls skip FastAPI's per-request layers (the routes below stay for the docs).
    app.cycle_route = CycleRoute(submit_maybe_next, new_lease, settings.max_body_bytes)

    AdminDep = Annotated[None, Depends(admin)]
    # The bearer scheme is read on the event loop (no thread hop); the token is checked against the
    # database inside each handler's own worker thread, so a request costs one hop, not two.
    Token = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]

    def header(cred: HTTPAuthorizationCredentials | None) -> str | None:
        return None if cred is None else f"{cred.scheme} {cred.credentials}"

    def as_json(model: BaseModel) -> Response:
        # Serialised once by pydantic-core; FastAPI would validate the model again first.
        return Response(content=model.model_dump_json(), media_type="application/json")

    @app.post("/api/v1/datasets", status_code=201, response_model=schemas.DatasetOut, tags=["operators"])
    def create_dataset(req: schemas.DatasetCreate, _: AdminDep) -> schemas.DatasetOut:
        return ingest.create_dataset(engine, req)

    @app.get("/api/v1/datasets", response_model=list[schemas.DatasetOut], tags=["operators"])
    def list_datasets() -> list[schemas.DatasetOut]:
        with engine.connect() as conn:
            rows = conn.execute(select(db.datasets).order_by(db.datasets.c.id)).all()
        return [schemas.DatasetOut.model_validate(r._mapping) for r in rows]

    @app.post("/api/v1/tasks", status_code=201, response_model=schemas.TaskOut, tags=["operators"])
    def create_task(req: schemas.TaskCreate, _: AdminDep) -> schemas.TaskOut:
        out = ingest.create_task(engine, req)
        platform.forget_tasks()
        return out

    @app.get("/api/v1/tasks", response_model=list[schemas.TaskOut], tags=["operators"])
    def list_tasks() -> list[schemas.TaskOut]:
        with engine.connect() as conn:
            ids = conn.execute(select(db.tasks.c.id).order_by(db.tasks.c.id)).scalars().all()
        return [ingest.task_out(engine, i) for i in ids]

    @app.post("/api/v1/agents", status_code=201, response_model=schemas.AgentToken, tags=["operators"])
    def create_agent(
        req: schemas.AgentCreate, authorization: Annotated[str | None, Header()] = None
    ) -> schemas.AgentToken:
        if not settings.open_registration:
            admin(authorization)
        return ingest.create_agent(engine, req, settings.rate_per_minute, settings.daily_quota)

    @app.post("/api/v1/agents/{agent_id}/revoke", tags=["operators"])
    def revoke(agent_id: int, _: AdminDep) -> dict[str, Any]:
        ingest.revoke_agent(engine, agent_id)
        return {"agent_id": agent_id, "revoked": True}

    @app.post("/api/v1/contributors/{contributor_id}/pause", tags=["operators"])
    def pause(
        contributor_id: int,
        _: AdminDep,
        reason: Annotated[str, Body(embed=True, min_length=1, max_length=500)],
    ) -> dict[str, Any]:
        with db.begin_write(engine) as conn:
            _contributor(conn, contributor_id)
            reversed_n = reputation.pause(conn, contributor_id, f"paused by an operator: {reason}")
        return {"contributor_id": contributor_id, "paused": True, "reversed_credits": reversed_n}

    @app.post("/api/v1/contributors/{contributor_id}/unpause", tags=["operators"])
    def unpause(contributor_id: int, _: AdminDep) -> dict[str, Any]:
        C = db.contributors
        with db.begin_write(engine) as conn:
            _contributor(conn, contributor_id)
            conn.execute(
                update(C)
                .where(C.c.id == contributor_id)
                .values(paused=False, pause_reason=None, paused_at=None, gold_fail=0, disagree=0, rejected=0)
            )
        return {"contributor_id": contributor_id, "paused": False}

    @app.get("/api/v1/me", response_model=schemas.Me, tags=["agents"])
    def me(token: Token) -> schemas.Me:
        return submissions.me(platform, agent(header(token)))

    @app.post(
        "/api/v1/leases",
        response_model=schemas.Lease,
        tags=["agents"],
        responses={204: {"description": "no work now"}},
    )
    def lease(
        token: Token,
        body: Annotated[schemas.LeaseBody, Body()] = None,
        idempotency_key: Annotated[schemas.LeaseKey | None, Header(description="Retry-safe leasing.")] = None,
    ) -> Response:
        got = new_lease(header(token), (body or {}).get("task_id"), idempotency_key)
        return Response(status_code=204) if got is None else as_json(got)

    @app.post("/api/v1/leases/{lease_id}/heartbeat", response_model=schemas.HeartbeatOut, tags=["agents"])
    def heartbeat(lease_id: int, token: Token) -> schemas.HeartbeatOut:
        return leasing.heartbeat(platform, agent(header(token)), lease_id)

    @app.delete("/api/v1/leases/{lease_id}", status_code=204, tags=["agents"])
    def release(lease_id: int, token: Token) -> Response:
        leasing.release(platform, agent(header(token)), lease_id)
        return Response(status_code=204)

    @app.post("/api/v1/leases/{lease_id}/submit", response_model=schemas.SubmissionOut, tags=["agents"])
    def submit(lease_id: int, body: schemas.SubmissionIn, token: Token) -> Response:
        return as_json(submit_maybe_next(header(token), lease_id, body, False, None).submission)

    @app.post(
        "/api/v1/leases/{lease_id}/submit-and-lease",
        response_model=schemas.CycleOut,
        tags=["agents"],
        description="Submit this lease's results and lease the next unit in one call (BOINC's "
        "scheduler RPC). A retry with the same idempotency_key gets the same answer and the same "
        "next unit, while that lease is active.",
    )
    def submit_and_lease(lease_id: int, body: schemas.CycleIn, token: Token) -> Response:
        return as_json(submit_maybe_next(header(token), lease_id, body, True, body.next_task_id))

    @app.get("/api/v1/leases/{lease_id}/images/{item_id}", tags=["agents"])
    def image(lease_id: int, item_id: str, token: Token) -> Response:
        # Not rate limited: bounded by the lease itself (only its holder, only its items), and a
        # unit is hundreds of images.
        view = leasing.lease_view(platform, agent_no_limit(header(token)), lease_id)
        match = next((v for v in view if v.public_id == item_id), None)
        if match is None:
            raise NotFound(f"item {item_id!r} is not in lease {lease_id}")
        data, ext = leasing.image_bytes(platform, match.item_id)
        return Response(content=data, media_type=image_media_type(data, ext))

    _wire_dashboard(app)
    return app


def _contributor(conn: Any, contributor_id: int) -> None:
    if (
        conn.execute(select(db.contributors.c.id).where(db.contributors.c.id == contributor_id)).first()
        is None
    ):
        raise NotFound(f"no contributor {contributor_id}")


def _wire_dashboard(app: FastAPI) -> None:
    app.include_router(dashboard_router)
    mount_static(app)
