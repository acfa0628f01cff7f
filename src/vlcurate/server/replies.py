"""The error replies of the JSON API, in one place: FastAPI's exception handlers (`install`) and the
bare unit-cycle route (`cycle_route`) answer the same errors with the same status, body and headers."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException
from starlette.responses import Response

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


def malformed_json(cause: BaseException) -> JSONResponse:
    """A body no JSON parser should read on (100,000 nested `[`, bytes that are not UTF-8): a 400
    that says why, where a syntax error is a 422 with its position."""
    if isinstance(cause, RecursionError):
        why = "nested too deeply"
    elif isinstance(cause, UnicodeDecodeError):
        why = "not UTF-8 text"
    else:
        why = "cannot be read"
    return JSONResponse({"detail": f"malformed JSON: {why}"}, status_code=400)


def install(app: FastAPI) -> None:
    """These replies as `app`'s exception handlers."""

    @app.exception_handler(PlatformError)
    async def _platform_error(_: Request, exc: PlatformError) -> JSONResponse:
        return platform_error(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return invalid(exc.errors())

    @app.exception_handler(DBAPIError)  # OperationalError included
    async def _db_down(_: Request, exc: DBAPIError) -> JSONResponse:
        return database_down(exc)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        # FastAPI answers a body its JSON parser gave up on (not a syntax error: those are 422s) with
        # a bare 400 "There was an error parsing the body", raised from the parser's error.
        if exc.status_code == 400 and isinstance(exc.__cause__, RecursionError | ValueError):
            return malformed_json(exc.__cause__)
        return await http_exception_handler(request, exc)
