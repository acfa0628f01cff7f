"""The FastAPI application: one router per resource (`routers`), their dependencies (`deps`), the
dashboard, the bare unit-cycle route, and the lease sweeper.

Handlers are plain functions (FastAPI runs them in its thread pool) over the services in
`ingest`, `leasing` and `submissions`; every error those raise becomes a status code with a one-line
`detail` (`replies`), and a dropped database connection becomes a 503 the agents retry.
"""

import contextlib
import functools
import gc
import logging
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import FastAPI
from sqlalchemy import insert, select, update
from starlette.types import Receive, Scope, Send

from vlcurate import __version__
from vlcurate.server import dashboard, db, leasing, replies
from vlcurate.server.cycle_route import CycleRoute
from vlcurate.server.migrate import upgrade
from vlcurate.server.platform import Platform
from vlcurate.server.routers import ROUTERS, leases
from vlcurate.server.settings import ServerSettings
from vlcurate.server.tokens import hash_token, new_token

log = logging.getLogger("vlcurate.server")


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
    app = PlatformAPI(
        title="vlcurate DataAgent platform",
        version=__version__,
        lifespan=_lifespan,
        # FastAPI's own body limit (413 for declared and streamed bodies alike).
        max_body_size=settings.max_body_bytes,
        # Native OpenTelemetry checks the global providers on every request (a measurable share of
        # a unit cycle); it is on only when asked for.
        telemetry=None
        if settings.telemetry
        else {"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        description="Hands out scoring work, verifies it (quorum, hidden checks), pays valid work.",
    )
    app.state.engine, app.state.platform, app.state.settings = engine, platform, settings
    app.state.admin_hash = _admin_hash(engine, settings)
    replies.install(app)
    for router in ROUTERS:
        app.include_router(router)
    dashboard.mount_static(app)
    # The unit-cycle calls skip FastAPI's per-request layers (their routes stay for the docs).
    app.cycle_route = CycleRoute(
        functools.partial(leases.submit_cycle, platform),
        functools.partial(leases.new_lease, platform),
        settings.max_body_bytes,
    )
    return app


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServerSettings = app.state.settings
    # A few handler threads. On SQLite they are handed the GIL often: a transaction holding the
    # database's write lock must not wait 5 ms for the GIL each time it needs it while dozens
    # of other threads parse requests (measured: it halved throughput and made p99 seconds
    # long). PostgreSQL's hot path holds no lock in the server process, and Python's default
    # (5 ms) costs less switching: 373 against 327 unit cycles/s (50 agents, closed loop).
    anyio.to_thread.current_default_thread_limiter().total_tokens = settings.handler_threads
    sqlite = app.state.engine.dialect.name == "sqlite"
    sys.setswitchinterval(settings.switch_interval or (0.0005 if sqlite else 0.005))
    stop = threading.Event()
    sweeper = threading.Thread(
        target=_sweep, args=(app.state.platform, stop), name="lease-sweeper", daemon=True
    )
    sweeper.start()
    # What start-up built (modules, the app, SQLAlchemy's metadata: ~150,000 objects) lives as
    # long as the process: out of the collector's reach, so a full collection, which pauses the
    # whole worker, walks only what requests leave behind.
    gc.collect()
    gc.freeze()
    yield
    stop.set()
    app.state.engine.dispose()


def _sweep(platform: Platform, stop: threading.Event) -> None:
    """Requeue expired leases every `sweep_seconds` until `stop` is set."""
    while not stop.wait(platform.settings.sweep_seconds):
        try:
            n = leasing.expire_leases(platform)
            if n:
                log.info("requeued %d expired leases", n)
        except Exception as exc:  # a dropped connection must not kill the sweeper
            log.warning("lease sweep failed: %s", exc)


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
