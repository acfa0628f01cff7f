"""The routers' dependencies, in one place: the platform and database from the app's state, who is
calling (the operator token, an agent's bearer token, with or without its rate limit), and where
from (the client's address, which leasing records to link accounts).

`create_app` puts the `Platform`, the engine, the settings and the operator token's hash on
`app.state`; everything here reads them from the request, so a router holds no state of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlalchemy.engine import Connection, Engine
from starlette.responses import Response

from vlcurate.server import queries
from vlcurate.server.auth import Caller, agent_for_token, bearer
from vlcurate.server.errors import Forbidden, PlatformError, TooMany
from vlcurate.server.platform import Platform
from vlcurate.server.settings import ServerSettings
from vlcurate.server.tokens import hash_token, same

T = TypeVar("T")


# ---- the app's state ----------------------------------------------------------------------------


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> ServerSettings:
    settings: ServerSettings = request.app.state.settings
    return settings


def read(request: Request, fn: Callable[[Connection], T]) -> T:
    """Run `fn` on one read-only snapshot of the database (the public read API, the dashboard)."""
    with queries.read_connection(get_engine(request)) as conn:
        return fn(conn)


def origin(request: Request) -> str | None:
    """The client's address (the peer uvicorn saw), or None when the server does not know it."""
    return request.client.host if request.client is not None else None


PlatformDep = Annotated[Platform, Depends(get_platform)]
EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
Origin = Annotated[str | None, Depends(origin)]


# ---- the operator -------------------------------------------------------------------------------


def is_admin(request: Request, authorization: str | None) -> bool:
    """Whether `authorization` carries the operator token (a malformed header does not)."""
    try:
        token = bearer(authorization)
    except PlatformError:
        return False
    return same(hash_token(token), request.app.state.admin_hash)


def admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Only the operator: anyone else is a 403."""
    if not is_admin(request, authorization):
        raise Forbidden("this needs the operator token")


def operator_view(request: Request, authorization: Annotated[str | None, Header()] = None) -> bool:
    """Whether this read is the operator's (it may show what the public may not, e.g. file paths)."""
    return is_admin(request, authorization)


AdminDep = Annotated[None, Depends(admin)]
OperatorView = Annotated[bool, Depends(operator_view)]


# ---- agents -------------------------------------------------------------------------------------

# The bearer scheme is read on the event loop (and shows as the API's security scheme in /docs).
Token = Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))]


def header(cred: HTTPAuthorizationCredentials | None) -> str | None:
    """The Authorization header back from the bearer scheme's parse (None when there was none)."""
    return None if cred is None else f"{cred.scheme} {cred.credentials}"


def caller_for(p: Platform, authorization: str | None) -> Caller:
    """The agent an Authorization header names, or a 401; not rate limited."""
    # One round trip for the token check: no BEGIN/ROLLBACK around a single read.
    with p.autocommit.connect() as conn:
        return agent_for_token(conn, bearer(authorization))


def _within(p: Platform, key: object, rate: int, limit_name: str, unit: str) -> None:
    """A 429 when the limiter's bucket `key` has no room for one more at `rate` a minute."""
    wait = p.limiter.check(key, rate)
    if wait > 0:
        raise TooMany(f"{limit_name} of {rate} {unit}/minute exceeded", wait)


def limit(p: Platform, caller: Caller) -> Caller:
    """`caller`, once its per-agent request rate allows one more request; else a 429."""
    _within(p, caller.agent_id, caller.rate_per_minute, "rate limit", "requests")
    return caller


def limit_images(p: Platform, caller: Caller) -> Caller:
    """`caller`, once its image rate (`image_rate_per_minute`, a key space of its own) allows one more."""
    _within(p, ("images", caller.agent_id), p.settings.image_rate_per_minute, "image rate limit", "images")
    return caller


def agent(p: PlatformDep, token: Token) -> Caller:
    """The calling agent, within its request rate."""
    return limit(p, caller_for(p, header(token)))


def image_agent(p: PlatformDep, token: Token) -> Caller:
    """The calling agent, within its image rate (images are not counted against its request rate:
    a unit is hundreds of them)."""
    return limit_images(p, caller_for(p, header(token)))


Agent = Annotated[Caller, Depends(agent)]
ImageAgent = Annotated[Caller, Depends(image_agent)]


# ---- answers ------------------------------------------------------------------------------------


def as_json(model: BaseModel, **dump: Any) -> Response:
    """A model's JSON, serialised once by pydantic-core (FastAPI would validate the model again first)."""
    return Response(content=model.model_dump_json(**dump), media_type="application/json")
