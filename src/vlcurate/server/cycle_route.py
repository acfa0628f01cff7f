"""The agents' unit-cycle calls (`POST /api/v1/leases/{id}/submit` and `.../submit-and-lease`) as a
bare ASGI route, in front of FastAPI's router.

They are nearly all of a running platform's requests, and for them FastAPI's per-request layers
(dependency solving, validating the body on the event loop, routing, response wrapping) cost as
much server CPU as the whole verification. Here the body is parsed and validated in the handler
thread, with the same parser and model as FastAPI (so the same 422s); the handler is the same
`submit_maybe_next` the FastAPI routes call; the answer goes out as the bytes pydantic serialised.

FastAPI still declares both routes (OpenAPI docs at /docs) and answers any request this route
passes on (a lease id too long for the database, another method). Errors are `replies`' answers,
as FastAPI gives them; the request body limit is FastAPI's, which wraps this route; anything
unexpected is a 500 from Starlette's error middleware, as elsewhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vlcurate.server import replies, schemas
from vlcurate.server.errors import PlatformError

# lease id, then which call; ids beyond 18 digits go to FastAPI (and get its answer)
_PATH = re.compile(r"/api/v1/leases/(\d{1,18})/(submit|submit-and-lease)")

Run = Callable[[str | None, int, schemas.SubmissionIn, bool, int | None], schemas.CycleOut]


class CycleRoute:
    """ASGI middleware: answers the two unit-cycle calls itself, passes everything else on."""

    def __init__(self, app: ASGIApp, run: Run) -> None:
        self.app = app
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _PATH.fullmatch(scope["path"]) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:
            return  # the client went away
        auth = _header(scope, b"authorization")
        lease_id, combined = int(match[1]), match[2] == "submit-and-lease"
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


async def _read_body(receive: Receive) -> bytes | None:
    """The whole request body (FastAPI's limit, outside this route, stops an oversized one)."""
    chunks: list[bytes] = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
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
