"""The agents' unit-cycle calls (`POST /api/v1/leases/{id}/submit` and `.../submit-and-lease`) as a
bare ASGI route, ahead of all of FastAPI's layers (`PlatformAPI` sends them here first).

They are nearly all of a running platform's requests, and for them FastAPI's per-request layers
(error, telemetry and body-limit middleware, dependency solving, validating the body on the event
loop, routing, response wrapping) cost as much server CPU as the whole verification. Here the body
is parsed and validated in the handler thread, with the same parser and model as FastAPI (so the
same 422s); the handler is the same `submit_maybe_next` the FastAPI routes call; the answer goes out
as the bytes pydantic serialised.

FastAPI still declares both routes (OpenAPI docs at /docs) and answers any request this route
passes on (a lease id too long for the database, another method). Errors are `replies`' answers,
as FastAPI gives them: the same 413 for a body over the limit (declared or streamed), 422, 4xx of
the services, 503 when the database is down, and a 500 for anything unexpected.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.responses import PlainTextResponse
from starlette.types import Message, Receive, Scope, Send

from vlcurate.server import replies, schemas
from vlcurate.server.errors import PlatformError

log = logging.getLogger("vlcurate.server")

# lease id, then which call; ids beyond 18 digits go to FastAPI (and get its answer)
_PATH = re.compile(r"/api/v1/leases/(\d{1,18})/(submit|submit-and-lease)")

Run = Callable[[str | None, int, schemas.SubmissionIn, bool, int | None], schemas.CycleOut]


class CycleRoute:
    """Answers the two unit-cycle calls: `target(scope)` says whether a request is one of them."""

    def __init__(self, run: Run, max_body_bytes: int) -> None:
        self.run = run
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def target(scope: Scope) -> tuple[int, bool] | None:
        """(lease id, whether the next unit is wanted) for a unit-cycle call; None for any other."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        match = _PATH.fullmatch(scope["path"])
        return None if match is None else (int(match[1]), match[2] == "submit-and-lease")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, target: tuple[int, bool]) -> None:
        try:
            await self._respond(scope, receive, send, *target)
        except Exception:
            log.exception("unit-cycle call %s failed", scope["path"])
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise

    async def _respond(
        self, scope: Scope, receive: Receive, send: Send, lease_id: int, combined: bool
    ) -> None:
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await replies.too_large()(scope, receive, send)
            return
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _TooLarge:
            await replies.too_large()(scope, receive, send)
            return
        if body is None:
            return  # the client went away
        auth = _header(scope, b"authorization")
        try:
            content = await anyio.to_thread.run_sync(self._answer, auth, lease_id, body, combined)
        except ValidationError as exc:
            await replies.invalid(_body_errors(exc))(scope, receive, send)
            return
        except _BadJson as exc:
            await replies.invalid([{"loc": ("body", exc.position), "msg": "JSON decode error"}])(
                scope, receive, send
            )
            return
        except PlatformError as exc:
            await replies.platform_error(exc)(scope, receive, send)
            return
        except DBAPIError as exc:  # OperationalError included
            await replies.database_down(exc)(scope, receive, send)
            return
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(content)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": content})

    def _answer(self, auth: str | None, lease_id: int, body: bytes, combined: bool) -> bytes:
        """In a handler thread: validate, submit (and lease), serialise."""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise _BadJson(exc) from exc
        if combined:
            cycle_in = schemas.CycleIn.model_validate(data)
            return self.run(auth, lease_id, cycle_in, True, cycle_in.next_task_id).model_dump_json().encode()
        sub = schemas.SubmissionIn.model_validate(data)
        return self.run(auth, lease_id, sub, False, None).submission.model_dump_json().encode()


class _BadJson(Exception):
    """The body is not JSON (as FastAPI reports it: where parsing stopped)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.position = getattr(cause, "pos", 0)


class _TooLarge(Exception):
    """The body passed the limit while it streamed in."""


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole request body, or None if the client left; `_TooLarge` as soon as it passes `limit`."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _TooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _body_errors(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic's errors located as FastAPI locates a request body's (`body.results.3.score`)."""
    return [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_input=False, include_url=False)]
