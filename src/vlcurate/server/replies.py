"""The error replies of the JSON API, in one place: FastAPI's exception handlers and the bare
unit-cycle route (`cycle_route`) answer the same errors with the same status, body and headers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi.responses import JSONResponse

from vlcurate.server.errors import PlatformError, TooMany

log = logging.getLogger("vlcurate.server")


def platform_error(exc: PlatformError) -> JSONResponse:
    """A service's refusal: its status and one-line detail (429s say when to come back)."""
    headers = {"Retry-After": str(max(1, round(exc.retry_after)))} if isinstance(exc, TooMany) else None
    return JSONResponse({"detail": exc.detail}, status_code=exc.status, headers=headers)


def invalid(errors: Sequence[Any]) -> JSONResponse:
    """A 422 with one readable line plus the locations. The offending input is never echoed back
    (it may be NaN, which JSON cannot carry, or megabytes of junk)."""
    out = [
        {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", ""))} for e in list(errors)[:20]
    ]
    line = "; ".join(f"{'.'.join(e['loc'])}: {e['msg']}" for e in out[:5])
    return JSONResponse({"detail": line, "errors": out}, status_code=422)


def database_down(exc: Exception) -> JSONResponse:
    """A dropped or refused database connection: a 503 that agents retry."""
    log.warning("database error: %s", str(exc).splitlines()[0])
    return JSONResponse(
        {"detail": "database unavailable, retry"}, status_code=503, headers={"Retry-After": "1"}
    )


def too_large() -> JSONResponse:
    """A request body over `max_body_bytes`, as FastAPI's own limit answers it."""
    return JSONResponse({"detail": "Content Too Large"}, status_code=413)
