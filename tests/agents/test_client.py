"""PlatformClient against a real scripted HTTP server: retries, backoff, Retry-After, typed errors.

The server is a plain `http.server` in a background thread whose answers a test scripts per
request (status, headers, body, a delay, or dropping the connection), so every failure mode an
agent meets on the internet is real socket behaviour, not a mock.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from vlcurate.agents.client import (
    AuthError,
    ConflictError,
    NotFoundError,
    PausedError,
    PlatformClient,
    PlatformError,
    RateLimitedError,
    RetryPolicy,
    UnavailableError,
    parse_retry_after,
)
from vlcurate.server import schemas

FAST = RetryPolicy(base=0.05, cap=0.2, max_elapsed=10.0)


@dataclass
class Reply:
    """What the scripted server does with one request."""

    status: int = 200
    body: Any = None  # dict/list -> JSON, bytes -> raw
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False  # close the socket without answering


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Route = Callable[[Seen], Reply]


class ScriptedServer:
    """A threaded HTTP server whose replies come from `route(request)`; records every request."""

    def __init__(self, route: Route, port: int = 0) -> None:
        self.route = route
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _handle(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                seen = Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with outer._lock:
                    outer.requests.append(seen)
                reply = outer.route(seen)
                if reply.delay:
                    time.sleep(reply.delay)
                if reply.drop:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(reply.body, bytes):
                    data, ctype = reply.body, "application/octet-stream"
                elif reply.body is None:
                    data, ctype = b"", "application/json"
                else:
                    data, ctype = json.dumps(reply.body).encode(), "application/json"
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                if reply.status != 204:
                    self.send_header("Content-Type", ctype)
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if reply.status != 204:
                    with contextlib.suppress(ConnectionError):
                        self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _handle

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def paths(self, method: str | None = None) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests if method is None or r.method == method]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Route], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(route: Route) -> ScriptedServer:
        s = ScriptedServer(route)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.stop()


ME = {
    "agent_id": 1,
    "agent_name": "a",
    "contributor_id": 1,
    "contributor": "alice",
    "paused": False,
    "pause_reason": None,
    "reputation": 0.5,
    "points": 0.0,
    "valid_results": 0,
    "trusted": False,
    "quota_left": 1000,
}


def failing_first(n: int, failure: Reply, then: Reply) -> Route:
    """The first `n` requests get `failure`, every later one `then`."""
    count = {"n": 0}
    lock = threading.Lock()

    def route(_: Seen) -> Reply:
        with lock:
            count["n"] += 1
            k = count["n"]
        return failure if k <= n else then

    return route


def test_retries_503_then_succeeds(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(failing_first(2, Reply(503, {"detail": "restarting"}), Reply(200, ME)))
    with PlatformClient(srv.url, "tok", retry=FAST) as c:
        me = c.me()
    assert me.contributor == "alice"
    assert len(srv.requests) == 3
    assert all(r.headers["authorization"] == "Bearer tok" for r in srv.requests)


def test_honours_retry_after_on_429(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(
        failing_first(1, Reply(429, {"detail": "slow down"}, {"Retry-After": "1"}), Reply(200, ME))
    )
    t = time.monotonic()
    with PlatformClient(srv.url, "tok", retry=FAST) as c:
        c.me()
    assert time.monotonic() - t >= 1.0
    assert len(srv.requests) == 2


def test_long_retry_after_raises_rate_limited(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(lambda _: Reply(429, {"detail": "daily quota used"}, {"Retry-After": "3600"}))
    with PlatformClient(srv.url, "tok", retry=FAST) as c, pytest.raises(RateLimitedError) as ei:
        c.me()
    assert ei.value.status == 429 and ei.value.retry_after == pytest.approx(3600)
    assert "quota" in ei.value.detail
    assert len(srv.requests) == 1


def test_dropped_connections_resend_same_idempotency_key(scripted: Callable[[Route], ScriptedServer]) -> None:
    out = {
        "submission_id": 7,
        "lease_id": 3,
        "unit_id": 2,
        "state": "pending",
        "detail": "waiting for quorum",
        "points_credited": 0.0,
    }
    srv = scripted(failing_first(2, Reply(drop=True), Reply(200, out)))
    sub = schemas.SubmissionIn(
        idempotency_key="l3-abcdef0123",
        model_fingerprint="f" * 64,
        results=[
            schemas.ItemResult(item_id="x", score=0.25),
            schemas.ItemResult(item_id="y", status="decode_error"),
        ],
    )
    with PlatformClient(srv.url, "tok", retry=FAST) as c:
        got = c.submit(3, sub)
    assert got.submission_id == 7
    posts = [r for r in srv.requests if r.method == "POST"]
    assert len(posts) == 3
    assert {r.path for r in posts} == {"/api/v1/leases/3/submit"}
    bodies = [json.loads(r.body) for r in posts]
    assert all(b == bodies[0] for b in bodies)
    assert bodies[0]["idempotency_key"] == "l3-abcdef0123"


def test_read_timeout_is_retried(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(failing_first(1, Reply(200, ME, delay=1.5), Reply(200, ME)))
    with PlatformClient(srv.url, "tok", timeout=0.5, retry=FAST) as c:
        assert c.me().agent_id == 1
    assert len(srv.requests) == 2


def test_survives_server_that_is_down_then_comes_up() -> None:
    # Find a free port, leave it closed (connection refused), start the server there later.
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    started: list[ScriptedServer] = []

    def later() -> None:
        time.sleep(2.0)
        started.append(ScriptedServer(lambda _: Reply(200, ME), port=port))

    threading.Thread(target=later, daemon=True).start()
    try:
        t = time.monotonic()
        with PlatformClient(f"http://127.0.0.1:{port}", "tok", retry=RetryPolicy(base=0.1, cap=0.5)) as c:
            assert c.me().contributor == "alice"
        assert time.monotonic() - t >= 1.9
    finally:
        for s in started:
            s.stop()


def test_gives_up_after_budget(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(lambda _: Reply(503, {"detail": "down"}))
    t = time.monotonic()
    policy = RetryPolicy(base=0.05, cap=0.1, max_elapsed=0.6)
    with PlatformClient(srv.url, "tok", retry=policy) as c, pytest.raises(UnavailableError) as ei:
        c.me()
    assert time.monotonic() - t < 2.0
    assert ei.value.status == 503 and "down" in str(ei.value)
    assert len(srv.requests) >= 3


@pytest.mark.parametrize(
    ("status", "cls"),
    [(401, AuthError), (403, PausedError), (404, NotFoundError), (409, ConflictError), (422, PlatformError)],
)
def test_client_errors_are_typed_and_not_retried(
    scripted: Callable[[Route], ScriptedServer], status: int, cls: type[PlatformError]
) -> None:
    srv = scripted(lambda _: Reply(status, {"detail": f"reason {status}"}))
    with PlatformClient(srv.url, "tok", retry=FAST) as c, pytest.raises(cls) as ei:
        c.heartbeat(5)
    assert type(ei.value) is cls
    assert ei.value.status == status and ei.value.detail == f"reason {status}"
    assert len(srv.requests) == 1
    if cls is PausedError:
        assert isinstance(ei.value, PausedError) and ei.value.reason == "reason 403"


def test_lease_204_is_none_and_task_id_is_sent(scripted: Callable[[Route], ScriptedServer]) -> None:
    srv = scripted(lambda _: Reply(204))
    with PlatformClient(srv.url, "tok", retry=FAST) as c:
        assert c.lease() is None
        assert c.lease(task_id=4) is None
        c.release(9)
    assert srv.requests[0].body == b""
    assert json.loads(srv.requests[1].body) == {"task_id": 4}
    assert (srv.requests[2].method, srv.requests[2].path) == ("DELETE", "/api/v1/leases/9")


def test_image_paths_join_server_and_foreign_hosts_are_refused(
    scripted: Callable[[Route], ScriptedServer],
) -> None:
    srv = scripted(lambda s: Reply(200, b"\xff\xd8\xffimage" + s.path.encode()))
    with PlatformClient(srv.url + "/", "tok", retry=FAST) as c:
        assert c.image("/api/v1/leases/1/images/abc").endswith(b"/api/v1/leases/1/images/abc")
        assert c.image(f"{srv.url}/api/v1/leases/1/images/d").endswith(b"images/d")
        with pytest.raises(PlatformError, match="refusing"):
            c.image("http://evil.example/steal")
    assert len(srv.requests) == 2


def test_bad_server_url_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="http"):
        PlatformClient("localhost:8000", "t")


def test_parse_retry_after() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 30))
    got = parse_retry_after(future)
    assert got is not None and 25 <= got <= 31


def test_backoff_grows_to_cap_with_jitter() -> None:
    import random

    p = RetryPolicy(base=0.5, cap=8.0)
    rng = random.Random(0)
    for attempt in range(12):
        delays = [p.backoff(attempt, rng) for _ in range(200)]
        assert min(delays) >= 0.25
        assert max(delays) <= min(8.0, 0.5 * 2**attempt) + 1e-9
    late = [p.backoff(10, rng) for _ in range(500)]
    assert len({round(d, 3) for d in late}) > 100  # jittered, not lockstep
