"""HTTP client for the platform API, built to outlive flaky networks and server restarts.

Every call retries connection errors, timeouts, 5xx and 429 with capped exponential backoff and
full jitter (a fleet of agents must not hammer a restarting server in lockstep), honouring
Retry-After. Only when a failure has lasted longer than the policy's budget does a call give up
with `UnavailableError`. Other 4xx answers are not retried: they raise a `PlatformError` subclass
carrying the status and the server's detail, so the runner can react (stop on 401/403, drop a unit
on 409). Submissions carry an idempotency key, so resending the same body after a lost response
is safe: the server replays the first answer and credits once.
"""

from __future__ import annotations

import email.utils
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx

from vlcurate import __version__
from vlcurate.server import schemas

log = logging.getLogger("vlcurate.agent.client")

API = "/api/v1"
RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class PlatformError(Exception):
    """A request the server answered with an error (or never answered); `status` 0 means no answer."""

    def __init__(self, status: int, detail: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {detail}" if status else detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


class AuthError(PlatformError):
    """401: the token is unknown, revoked or expired; retrying cannot help."""


class PausedError(PlatformError):
    """403: the contributor is paused; `reason` says why (the server's detail)."""

    @property
    def reason(self) -> str:
        return self.detail


class NotFoundError(PlatformError):
    """404: unknown lease, item or resource."""


class ConflictError(PlatformError):
    """409: the lease is not held any more, expired, or the unit was already submitted."""


class RateLimitedError(PlatformError):
    """429 whose Retry-After is longer than the client is willing to wait inside one call."""


class UnavailableError(PlatformError):
    """Retries ran out: the server was unreachable or kept failing for longer than the budget."""


class CancelledError(PlatformError):
    """The client was cancelled (shutting down) while waiting to retry."""


def _error_for(status: int, detail: str, retry_after: float | None) -> PlatformError:
    cls: type[PlatformError] = {
        401: AuthError,
        403: PausedError,
        404: NotFoundError,
        409: ConflictError,
        429: RateLimitedError,
    }.get(status, PlatformError)
    return cls(status, detail, retry_after)


@dataclass(frozen=True)
class RetryPolicy:
    """How long and how fast to retry transient failures.

    `max_elapsed` bounds the time one call keeps retrying (None: forever); `max_retry_after`
    bounds how long a single Retry-After is honoured before the call raises RateLimitedError.
    """

    base: float = 0.5
    cap: float = 30.0
    max_elapsed: float | None = 600.0
    max_retry_after: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)], but never below base / 2."""
        ceiling = min(self.cap, self.base * (2.0 ** min(attempt, 30)))
        return max(self.base / 2.0, rng.uniform(0.0, ceiling))


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: either delta-seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _detail(resp: httpx.Response) -> str:
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:500] or resp.reason_phrase
    if isinstance(body, dict) and "detail" in body:
        d = body["detail"]
        return d if isinstance(d, str) else str(d)[:500]
    return str(body)[:500]


class PlatformClient:
    """Synchronous, thread-safe client for one server and one bearer token.

    Thread-safe because the heartbeat thread and the image download pool share it with the main
    loop (httpx.Client's connection pool is safe to use from several threads).
    """

    def __init__(
        self,
        server: str,
        token: str | None,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 32,
        sleep: Callable[[float], None] | None = None,
        seed: int | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise ValueError(f"--server must be an http(s) URL, got {server!r}")
        self.server = server.rstrip("/")
        self.retry = retry or RetryPolicy()
        self._rng = random.Random(seed)
        self._sleep = sleep
        self.on_retry = on_retry  # told about every transient failure (the console shows them)
        self._cancel = threading.Event()
        headers = {"User-Agent": f"vlcurate-agent/{__version__}"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.server,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=connect_timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            follow_redirects=False,
        )

    # ---- lifecycle ------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PlatformClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def cancel(self) -> None:
        """Make calls waiting to retry give up at once (CancelledError); used when shutting down."""
        self._cancel.set()

    # ---- agent endpoints -----------------------------------------------------------------
    def me(self, *, retry: RetryPolicy | None = None) -> schemas.Me:
        return schemas.Me.model_validate(self._request("GET", f"{API}/me", retry=retry).json())

    def lease(self, task_id: int | None = None) -> schemas.Lease | None:
        """A unit of work, or None when the server has nothing now (204)."""
        body = {"task_id": task_id} if task_id is not None else None
        # One key for this lease and all its retries: if an answer is lost in transit, the retry
        # gets the lease the first attempt made instead of orphaning it.
        key = {"Idempotency-Key": f"lease-{uuid.uuid4().hex}"}
        resp = self._request("POST", f"{API}/leases", json=body, headers=key)
        if resp.status_code == 204 or not resp.content:
            return None
        return schemas.Lease.model_validate(resp.json())

    def heartbeat(self, lease_id: int, *, retry: RetryPolicy | None = None) -> schemas.HeartbeatOut:
        resp = self._request("POST", f"{API}/leases/{lease_id}/heartbeat", retry=retry)
        return schemas.HeartbeatOut.model_validate(resp.json())

    def release(self, lease_id: int, *, retry: RetryPolicy | None = None) -> None:
        """Hand a lease back so that the unit is leasable again right away."""
        self._request("DELETE", f"{API}/leases/{lease_id}", retry=retry)

    def submit(self, lease_id: int, submission: schemas.SubmissionIn) -> schemas.SubmissionOut:
        """Send results; every retry resends the very same body (same idempotency key)."""
        payload = submission.model_dump(mode="json")
        resp = self._request("POST", f"{API}/leases/{lease_id}/submit", json=payload)
        return schemas.SubmissionOut.model_validate(resp.json())

    def submit_and_lease(
        self, lease_id: int, submission: schemas.SubmissionIn, task_id: int | None = None
    ) -> schemas.CycleOut:
        """Send results and get the next unit in the same call (one request per unit cycle).

        Retries resend the same body: the server answers a repeat with the first result and the
        same next lease, so neither the submission nor the next unit is lost or doubled.
        """
        payload = {**submission.model_dump(mode="json"), "next_task_id": task_id}
        resp = self._request("POST", f"{API}/leases/{lease_id}/submit-and-lease", json=payload)
        return schemas.CycleOut.model_validate(resp.json())

    def ledger(
        self,
        *,
        contributor: str | None = None,
        after_id: int | None = None,
        before_id: int | None = None,
        limit: int = 1000,
        retry: RetryPolicy | None = None,
    ) -> list[schemas.LedgerEntryOut]:
        """Ledger entries (credits and reversals), newest first; the public read API."""
        params: dict[str, str | int] = {"limit": limit}
        for name, value in (("contributor", contributor), ("after_id", after_id), ("before_id", before_id)):
            if value is not None:
                params[name] = value
        resp = self._request("GET", f"{API}/ledger?{httpx.QueryParams(params)}", retry=retry)
        return [schemas.LedgerEntryOut.model_validate(e) for e in resp.json()]

    def tasks(self, *, retry: RetryPolicy | None = None) -> list[schemas.TaskOut]:
        """Every task on the server (label tasks are leased only by asking for them by id)."""
        resp = self._request("GET", f"{API}/tasks", retry=retry)
        return [schemas.TaskOut.model_validate(t) for t in resp.json()]

    def image(self, url_path: str, *, retry: RetryPolicy | None = None) -> bytes:
        """The encoded bytes of a lease item's image (`UnitItem.image_url`, a path on this server)."""
        return self._request("GET", self._same_server(url_path), retry=retry).content

    # ---- operator endpoints (admin token) ------------------------------------------------
    def create_agent(self, body: schemas.AgentCreate) -> schemas.AgentToken:
        resp = self._request("POST", f"{API}/agents", json=body.model_dump(mode="json"))
        return schemas.AgentToken.model_validate(resp.json())

    # ---- plumbing ------------------------------------------------------------------------
    def _same_server(self, url_path: str) -> str:
        """Never send the bearer token to another host: only paths (or URLs on this server) pass."""
        if url_path.startswith(("http://", "https://")):
            if not url_path.startswith(self.server + "/"):
                raise PlatformError(0, f"refusing to fetch {url_path!r}: not on {self.server}")
            return url_path[len(self.server) :]
        return url_path if url_path.startswith("/") else "/" + url_path

    def _wait(self, delay: float) -> None:
        if self._sleep is not None:
            self._sleep(delay)
        elif self._cancel.wait(delay):
            raise CancelledError(0, "client cancelled while waiting to retry")

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        retry: RetryPolicy | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        policy = retry or self.retry
        started = time.monotonic()
        attempt = 0
        while True:
            if self._cancel.is_set():
                raise CancelledError(0, "client cancelled")
            retry_after: float | None = None
            try:
                resp = self._http.request(method, path, json=json, headers=headers)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                status = 0
            else:
                if resp.status_code < 400:
                    return resp
                detail = _detail(resp)
                retry_after = parse_retry_after(resp.headers.get("Retry-After"))
                if resp.status_code not in RETRY_STATUSES:
                    raise _error_for(resp.status_code, detail, retry_after)
                if retry_after is not None and retry_after > policy.max_retry_after:
                    raise _error_for(resp.status_code, detail, retry_after)
                problem = f"HTTP {resp.status_code}: {detail}"
                status = resp.status_code
            delay = policy.backoff(attempt, self._rng)
            if retry_after is not None:
                # The server knows when it will be ready; add a little jitter so agents spread out.
                delay = retry_after + self._rng.uniform(0.0, min(1.0, policy.base))
            elapsed = time.monotonic() - started
            if policy.max_elapsed is not None and elapsed + delay > policy.max_elapsed:
                raise UnavailableError(
                    status, f"{method} {path} failed for {elapsed:.0f}s, giving up: {problem}", retry_after
                )
            log.warning("%s %s: %s; retrying in %.1fs", method, path, problem, delay)
            if self.on_retry is not None:
                self.on_retry(f"{method} {path}: {problem} (retrying in {delay:.1f}s)")
            attempt += 1
            self._wait(delay)
