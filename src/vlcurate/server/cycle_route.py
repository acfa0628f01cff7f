"""The agents' unit-cycle calls (`POST /api/v1/leases`, `POST /api/v1/leases/{id}/submit` and
`.../submit-and-lease`) as a bare ASGI route, ahead of all of FastAPI's layers (`PlatformAPI` sends
them here first).

They are nearly all of a running platform's requests, and for them FastAPI's per-request layers
(error, telemetry and body-limit middleware, dependency solving, validating the body on the event
loop, routing, response wrapping) cost as much server CPU as the whole verification. Here the body
is parsed and validated in the handler thread, with the same parser and models as FastAPI (so the
same 422s); the handlers are the ones the FastAPI routes call; the answer goes out as the bytes
pydantic serialised.

FastAPI still declares the routes (OpenAPI docs at /docs) and answers any request this route
passes on (a lease id too long for the database, another method). Errors are `replies`' answers,
as FastAPI gives them: the same 413 for a body over the limit (declared or streamed), 422, 400 for
JSON that cannot be read at all (nested too deeply, not UTF-8), 4xx of the services, 503 when the
database is down, and a 500 for anything unexpected.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import anyio.to_thread
from pydantic import ValidationError
from sqlalchemy.exc import DBAPIError
from starlette.responses import PlainTextResponse, Response
from starlette.types import Message, Receive, Scope, Send

from vlcurate.server import replies, schemas
from vlcurate.server.errors import PlatformError

log = logging.getLogger("vlcurate.server")

# a new lease, or a lease id and which call; ids beyond 18 digits go to FastAPI (and get its answer)
_PATH = re.compile(r"/api/v1/leases(?:/(\d{1,18})/(submit|submit-and-lease))?")

# (Authorization header, lease id, body, whether the next unit is wanted, from which task, the
# client's address)
Submit = Callable[[str | None, int, schemas.SubmissionIn, bool, int | None, str | None], schemas.CycleOut]
# (Authorization header, task id, Idempotency-Key header, the client's address): a lease, or None
# when there is no work
Lease = Callable[[str | None, int | None, str | None, str | None], schemas.Lease | None]


class Call(NamedTuple):
    """Which unit-cycle call a request is."""

    lease_id: int | None  # None: a new lease (`POST /api/v1/leases`)
    combined: bool  # submit-and-lease


class CycleRoute:
    """Answers the unit-cycle calls: `target(scope)` says whether a request is one of them."""

    def __init__(self, submit: Submit, lease: Lease, max_body_bytes: int) -> None:
        self.submit = submit
        self.lease = lease
        self.max_body_bytes = max_body_bytes

    @staticmethod
    def target(scope: Scope) -> Call | None:
        """The call a request makes, or None for any other request."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return None
        match = _PATH.fullmatch(scope["path"])
        if match is None:
            return None
        return Call(None, False) if match[1] is None else Call(int(match[1]), match[2] == "submit-and-lease")

    async def __call__(self, scope: Scope, receive: Receive, send: Send, call: Call) -> None:
        try:
            await self._respond(scope, receive, send, call)
        except Exception:
            log.exception("unit-cycle call %s failed", scope["path"])
            await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            raise

    async def _respond(self, scope: Scope, receive: Receive, send: Send, call: Call) -> None:
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
        key = _header(scope, b"idempotency-key") if call.lease_id is None else None
        client = scope.get("client")
        origin = client[0] if client else None
        try:
            content = await anyio.to_thread.run_sync(self._answer, auth, key, call, body, origin)
        except _Unreadable as exc:
            await replies.malformed_json(exc.cause)(scope, receive, send)
            return
        except _Invalid as exc:
            await replies.invalid(exc.errors)(scope, receive, send)
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
        if content is None:  # no work now
            await Response(status_code=204)(scope, receive, send)
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

    def _answer(
        self, auth: str | None, key: str | None, call: Call, body: bytes, origin: str | None
    ) -> bytes | None:
        """In a handler thread: validate, lease or submit (and lease), serialise; None for a 204."""
        if call.lease_id is None:
            return self._new_lease(auth, key, body, origin)
        data = _json(body)
        if call.combined:
            cycle_in = _valid(schemas.CycleIn.model_validate, data)
            got = self.submit(auth, call.lease_id, cycle_in, True, cycle_in.next_task_id, origin)
            return got.model_dump_json().encode()
        sub = _valid(schemas.SubmissionIn.model_validate, data)
        out = self.submit(auth, call.lease_id, sub, False, None, origin)
        return out.submission.model_dump_json().encode()

    def _new_lease(self, auth: str | None, key: str | None, body: bytes, origin: str | None) -> bytes | None:
        """`POST /api/v1/leases`: the body is optional, as FastAPI reads an optional `Body()`, and
        the body's and the `Idempotency-Key` header's errors come back together, as FastAPI's."""
        data = _json(body) if body else None
        errors: list[dict[str, Any]] = []
        if key is not None:  # headers first, as FastAPI lists them
            try:
                key = schemas.LEASE_KEY.validate_python(key)
            except ValidationError as exc:
                errors += _located(exc, "header", "idempotency-key")
        payload: schemas.LeaseBody = None
        try:
            payload = schemas.LEASE_BODY.validate_python(data)
        except ValidationError as exc:
            errors += _located(exc, "body")
        if errors:
            raise _Invalid(errors)
        got = self.lease(auth, (payload or {}).get("task_id"), key, origin)
        return None if got is None else got.model_dump_json().encode()


class _BadJson(Exception):
    """The body is not JSON (as FastAPI reports it: where parsing stopped)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.position = getattr(cause, "pos", 0)


class _Unreadable(Exception):
    """JSON that cannot be read at all (nested too deeply, not UTF-8): a 400, as FastAPI's."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class _TooLarge(Exception):
    """The body passed the limit while it streamed in."""


class _Invalid(Exception):
    """A 422: the errors located as FastAPI locates them (`body.results.3.score`)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors)
        self.errors = errors


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise _BadJson(exc) from exc
    except (RecursionError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise _Unreadable(exc) from exc


def _valid(validate: Callable[[Any], Any], data: Any) -> Any:
    """`validate(data)`, its errors located under "body"."""
    try:
        return validate(data)
    except ValidationError as exc:
        raise _Invalid(_located(exc, "body")) from exc


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


def _located(exc: ValidationError, *where: str) -> list[dict[str, Any]]:
    """pydantic's errors located as FastAPI locates them (under "body", or "header" and its name)."""
    return [{**e, "loc": (*where, *e["loc"])} for e in exc.errors(include_input=False, include_url=False)]
