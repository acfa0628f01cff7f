"""The live event stream and the HTML dashboard (no authentication; the JSON reads they mirror are
`routers.public`).

Everything here only reads (see `queries`), so it can never change what agents are paid. Pages are
server-rendered Jinja2 with autoescape on (captions and contributor names are untrusted), and every
value a template prints passes `visible` first, so control and bidirectional-override characters
show as `\\u202e` instead of reordering or hiding what is around them. htmx swaps in fresh HTML
partials when the server-sent event stream says a panel changed (the page's script never inserts
event data itself), and polls slowly as a fallback when the stream is down. Wire it with:

    from vlcurate.server.dashboard import router, mount_static
    app.include_router(router); mount_static(app)
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader
from markupsafe import Markup
from sqlalchemy.engine import Connection, Engine
from starlette.concurrency import run_in_threadpool
from starlette.templating import Jinja2Templates

from vlcurate.server import queries
from vlcurate.server.deps import get_engine, read
from vlcurate.server.schemas import MAX_ID

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

POLL_SECONDS = 1.0  # how often the event stream looks at the change token
TOKEN_TTL_SECONDS = 0.5  # all open streams share one token read per TTL
KEEPALIVE_SECONDS = 10.0  # comment line so proxies and browsers keep an idle stream open
# uvicorn's graceful shutdown waits for open responses, and an event stream never finishes by itself:
# each stream ends after this long (EventSource reconnects at once) or when close_event_streams runs.
MAX_STREAM_SECONDS = 120.0
FEED_CARDS = 24
PANEL_ROWS = 25

# Defence in depth behind autoescape: no inline script, nothing from another origin.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

router = APIRouter()


def mount_static(app: FastAPI) -> None:
    """Serve the dashboard's CSS, JS and vendored htmx under /static."""
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


# ---- templates --------------------------------------------------------------------------------


def _points(value: float) -> str:
    return f"{value:+,.2f}" if value < 0 else f"{value:,.2f}"


def _score_class(score: float | None) -> str:
    if score is None:
        return "score-none"
    return "score-high" if score >= 0.3 else "score-mid" if score >= 0.15 else "score-low"


def _ts(value: Any) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(part: float, whole: float) -> str:
    return "0%" if not whole else f"{100.0 * part / whole:.1f}%"


# C0 and C1 controls (but tab and newline), DEL, and the bidirectional marks, embeddings, overrides
# and isolates, plus the byte-order mark: shown as `\u202e`, never acted on.
_INVISIBLE = {
    c: f"\\u{c:04x}"
    for c in (
        *range(0x00, 0x20),
        0x7F,
        *range(0x80, 0xA0),
        0x061C,
        0x200E,
        0x200F,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
        0xFEFF,
    )
    if c not in (0x09, 0x0A)
}


def visible(text: str) -> str:
    """`text` with control and bidi characters written out as `\\uXXXX` (the dashboard's one escape
    for them; HTML escaping is autoescape's)."""
    return text.translate(_INVISIBLE)


def _finalize(value: Any) -> Any:
    """Every `{{ ... }}` a template prints, before autoescape: strings made `visible`."""
    if isinstance(value, Markup):
        return Markup(visible(str(value)))
    return visible(value) if isinstance(value, str) else value


def _make_templates() -> Jinja2Templates:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.filters.update(points=_points, score_class=_score_class, ts=_ts)
    env.globals.update(pct=_pct)
    return Jinja2Templates(env=env)


templates = _make_templates()


def _render(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> HTMLResponse:
    resp = templates.TemplateResponse(request, name, context, status_code=status_code)
    resp.headers["Content-Security-Policy"] = PAGE_CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Cache-Control"] = "no-store"
    return resp


# ---- server-sent events -----------------------------------------------------------------------


class _TokenCache:
    """One change-token read per TTL however many streams are open."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self._at = -1e9
        self._value: queries.ChangeToken = {}

    def get(self, engine: Engine) -> queries.ChangeToken:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self.ttl:
                with queries.read_connection(engine) as conn:
                    self._value = queries.change_token(conn)
                self._at = now
            return self._value


_state_lock = threading.Lock()


def _app_state(app: Any) -> tuple[_TokenCache, dict[str, int]]:
    """The per-app token cache and stream counter (created on first use; the lead's app needs no setup)."""
    with _state_lock:
        if getattr(app.state, "dashboard_tokens", None) is None:
            app.state.dashboard_tokens = _TokenCache(TOKEN_TTL_SECONDS)
            app.state.dashboard_streams = {"open": 0}
    return app.state.dashboard_tokens, app.state.dashboard_streams


def close_event_streams(app: Any) -> None:
    """End every open event stream within a poll interval (call it when the server starts to shut
    down, e.g. from a uvicorn.Server subclass's `handle_exit`; otherwise shutdown waits up to
    MAX_STREAM_SECONDS or uvicorn's --timeout-graceful-shutdown)."""
    app.state.dashboard_closing = True


def _sse(event: str, data: Any) -> str:
    body = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {event}\ndata: {body}\n\n"


def _dump(value: Any) -> Any:
    if isinstance(value, list):
        return [v.model_dump(mode="json") for v in value]
    return value.model_dump(mode="json")


def _snapshot(engine: Engine) -> tuple[dict[str, Any], int, int]:
    """Stats for the first event, and the feed/ledger cursors to send only what is new after it."""
    with queries.read_connection(engine) as conn:
        st = queries.stats(conn)
        newest_feed = queries.feed(conn, limit=1)
        newest_ledger = queries.ledger(conn, limit=1)
    return (
        _dump(st),
        newest_feed[0].id if newest_feed else 0,
        newest_ledger[0].id if newest_ledger else 0,
    )


def _payloads(
    engine: Engine, changed: list[str], feed_after: int, ledger_after: int
) -> list[tuple[str, Any]]:
    """The events for the panels whose part of the change token moved, read in one snapshot."""
    out: list[tuple[str, Any]] = []
    with queries.read_connection(engine) as conn:
        for name in changed:
            if name == "stats":
                out.append((name, _dump(queries.stats(conn))))
            elif name == "feed":
                out.append((name, _dump(queries.feed(conn, after_id=feed_after, limit=50))))
            elif name == "ledger":
                out.append((name, _dump(queries.ledger(conn, after_id=ledger_after, limit=100))))
            elif name == "contributors":
                out.append((name, _dump(queries.contributors(conn, limit=200))))
            elif name == "flagged":
                out.append((name, _dump(queries.flagged(conn))))
    return out


@router.get("/api/v1/events", tags=["public"], response_class=StreamingResponse)
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `stats` on connect, then `stats`, `feed` (new pairs), `ledger` (new
    entries), `contributors` and `flagged` whenever that part of the database changes.

    The loop polls a cached change token once a second with a short read in the threadpool, so an
    idle dashboard costs one tiny query per second per server. It ends as soon as the client goes
    away, after MAX_STREAM_SECONDS (the browser reconnects by itself and gets `stats` again), or
    when close_event_streams is called.
    """
    app = request.app
    engine = get_engine(request)
    cache, streams = _app_state(app)

    async def stream() -> AsyncIterator[str]:
        streams["open"] += 1
        try:
            token = await run_in_threadpool(cache.get, engine)
            first, feed_after, ledger_after = await run_in_threadpool(_snapshot, engine)
            yield "retry: 2000\n\n" + _sse("stats", first)
            started = last_sent = time.monotonic()
            while not await request.is_disconnected():
                if getattr(app.state, "dashboard_closing", False):
                    return
                if time.monotonic() - started > MAX_STREAM_SECONDS:
                    return
                await anyio.sleep(POLL_SECONDS)
                new = await run_in_threadpool(cache.get, engine)
                changed = [k for k in new if new[k] != token.get(k)]
                token = new
                if changed:
                    sent = await run_in_threadpool(_payloads, engine, changed, feed_after, ledger_after)
                    for name, data in sent:
                        if name == "feed" and data:
                            feed_after = max(feed_after, max(e["id"] for e in data))
                        if name == "ledger" and data:
                            ledger_after = max(ledger_after, max(e["id"] for e in data))
                        yield _sse(name, data)
                    last_sent = time.monotonic()
                elif time.monotonic() - last_sent >= KEEPALIVE_SECONDS:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
        finally:
            streams["open"] -= 1

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


# ---- HTML -------------------------------------------------------------------------------------


def _ledger_context(
    conn: Connection, contributor: str | None = None, before_id: int | None = None, limit: int = PANEL_ROWS
) -> dict[str, Any]:
    rows = queries.ledger(conn, limit=limit, before_id=before_id, contributor=contributor)
    return {
        "ledger": rows,
        "ledger_contributor": contributor,
        "ledger_next": rows[-1].id if len(rows) == limit else None,
    }


def _index_context(conn: Connection) -> dict[str, Any]:
    return {
        "stats": queries.stats(conn),
        "feed": queries.feed(conn, limit=FEED_CARDS),
        "contributors": queries.contributors(conn, limit=50),
        "flagged": queries.flagged(conn),
        **_ledger_context(conn),
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def index(request: Request) -> HTMLResponse:
    """The live dashboard."""
    return _render(request, "index.html", read(request, _index_context))


_PARTIALS: dict[str, Callable[[Connection], dict[str, Any]]] = {
    "stats": lambda c: {"stats": queries.stats(c)},
    "feed": lambda c: {"feed": queries.feed(c, limit=FEED_CARDS)},
    "contributors": lambda c: {"contributors": queries.contributors(c, limit=50)},
    "flagged": lambda c: {"flagged": queries.flagged(c)},
}


@router.get("/partials/ledger", response_class=HTMLResponse, include_in_schema=False)
def partial_ledger(
    request: Request,
    contributor: str | None = Query(None, max_length=200),
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
    limit: int = Query(PANEL_ROWS, ge=1, le=500),
) -> HTMLResponse:
    """The ledger table, optionally for one contributor (htmx swaps it in)."""
    ctx = read(request, lambda c: _ledger_context(c, contributor, before_id, limit))
    return _render(request, "partials/ledger.html", ctx)


@router.get("/partials/{name}", response_class=HTMLResponse, include_in_schema=False)
def partial(request: Request, name: str) -> HTMLResponse:
    """One dashboard panel as an HTML fragment (htmx swaps it in when an event says it changed)."""
    build = _PARTIALS.get(name)
    if build is None:
        raise HTTPException(status_code=404, detail=f"no partial {name!r}")
    return _render(request, f"partials/{name}.html", read(request, build))


@router.get("/ledger", response_class=HTMLResponse, include_in_schema=False)
def ledger_page(
    request: Request,
    contributor: str | None = Query(None, max_length=200),
    before_id: int | None = Query(None, ge=1, le=MAX_ID),
) -> HTMLResponse:
    """The whole ledger, 100 entries a page, optionally for one contributor."""
    ctx = read(request, lambda c: _ledger_context(c, contributor or None, before_id, 100))
    return _render(request, "ledger.html", {**ctx, "before_id": before_id})


@router.get("/contributors/{contributor_id}", response_class=HTMLResponse, include_in_schema=False)
def contributor_page(request: Request, contributor_id: int) -> HTMLResponse:
    """One contributor: reputation, agents, and their ledger."""
    if not 1 <= contributor_id <= MAX_ID:
        return _render(request, "not_found.html", {"what": f"contributor {contributor_id}"}, 404)

    def build(conn: Connection) -> dict[str, Any] | None:
        who = queries.contributor(conn, contributor_id)
        if who is None:
            return None
        return {
            "who": who,
            "agents": queries.contributor_agents(conn, contributor_id),
            "trust_after": queries.trust_threshold(conn),
            **_ledger_context(conn, who.name, None, 100),
        }

    ctx = read(request, build)
    if ctx is None:
        return _render(request, "not_found.html", {"what": f"contributor {contributor_id}"}, 404)
    return _render(request, "contributor.html", ctx)


@router.get("/submissions/{submission_id}", response_class=HTMLResponse, include_in_schema=False)
def submission_page(request: Request, submission_id: int) -> HTMLResponse:
    """A submission's fate and the ledger entries (credit, reversal) that point at it; no scores."""
    if not 1 <= submission_id <= MAX_ID:
        return _render(request, "not_found.html", {"what": f"submission {submission_id}"}, 404)

    def build(conn: Connection) -> dict[str, Any] | None:
        sub = queries.submission(conn, submission_id)
        if sub is None:
            return None
        return {"sub": sub, "ledger": queries.ledger(conn, limit=100, submission_id=submission_id)}

    ctx = read(request, build)
    if ctx is None:
        return _render(request, "not_found.html", {"what": f"submission {submission_id}"}, 404)
    return _render(request, "submission.html", ctx)
