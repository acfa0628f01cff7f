"""The agent loop: lease a unit, fetch and decode its images, score them, submit, repeat.

Scores are computed exactly as `vlcurate score` computes them (same decoder, same model call),
so an honest agent agrees with the coordinator's own checks. The loop is built to keep going:
transient network trouble is retried inside the client, an empty queue means sleeping with
backoff, a lost lease drops that unit only. It stops for good only when asked to (Ctrl-C,
SIGTERM, max units, max idle time) or when continuing is pointless (bad token, paused
contributor, a model whose weights differ from the one the task pins); before stopping it hands
its current lease back so another agent can take the unit at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from vlcurate import __version__
from vlcurate.agents.client import (
    AuthError,
    CancelledError,
    ConflictError,
    NotFoundError,
    PausedError,
    PlatformClient,
    PlatformError,
    RateLimitedError,
    RetryPolicy,
    UnavailableError,
)
from vlcurate.server import schemas

log = logging.getLogger("vlcurate.agent")

Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ModelMismatchError(RuntimeError):
    """The model this agent loaded is not the exact model the task pins (different weights)."""


class AgentConfig(BaseModel):
    """Everything `vlcurate agent run` can be told."""

    model_config = ConfigDict(extra="forbid")

    server: str = Field(pattern=r"^https?://", description="Coordinator URL.")
    token: str = Field(min_length=1, repr=False, description="Agent token from `vlcurate agent register`.")
    model: str | None = Field(default=None, description="Model override; default: the model the task pins.")
    device: str = "auto"
    precision: Precision = "auto"
    task_id: int | None = Field(default=None, description="Only lease units of this task.")
    max_units: int | None = Field(default=None, ge=1, description="Stop after this many submitted units.")
    max_idle_s: float | None = Field(default=None, ge=0, description="Stop after this long without work.")
    quiet: bool = False
    fetch_concurrency: int = Field(default=16, ge=1, le=256)
    batch_size: int = Field(default=256, ge=1, le=8192)
    idle_sleep: float = Field(default=2.0, gt=0, description="First sleep when there is no work.")
    idle_sleep_max: float = Field(default=30.0, gt=0)
    retry_max_s: float | None = Field(
        default=600.0, gt=0, description="How long one request keeps retrying a down server (None: forever)."
    )
    timeout_s: float = Field(default=60.0, gt=0, description="Read timeout of one request.")
    me_every: int = Field(default=5, ge=1, description="Refresh reputation and points every N units.")


# ---- counters ---------------------------------------------------------------------------


@dataclass
class PairView:
    """One scored pair as the console shows it."""

    caption: str | None
    score: float | None
    status: str


@dataclass
class AgentStats:
    """Live counters the console reads; written by the runner (and the heartbeat thread for errors)."""

    started_at: float = field(default_factory=time.monotonic)
    state: str = "starting"
    units_done: int = 0
    units_dropped: int = 0
    pairs_scored: int = 0
    points_credited: float = 0.0
    submissions: dict[str, int] = field(default_factory=dict)
    lease_id: int | None = None
    unit_id: int | None = None
    model: str | None = None
    fingerprint: str | None = None
    me: schemas.Me | None = None
    last_pair: PairView | None = None
    recent_pairs: deque[PairView] = field(default_factory=lambda: deque(maxlen=6))
    errors: deque[tuple[float, str]] = field(default_factory=lambda: deque(maxlen=8))
    _window: deque[tuple[float, int]] = field(default_factory=deque, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    WINDOW_S = 60.0

    @property
    def last_error(self) -> str | None:
        with self._lock:
            return self.errors[-1][1] if self.errors else None

    def error(self, message: str) -> None:
        with self._lock:
            self.errors.append((time.time(), message))

    def add_pairs(self, n: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        with self._lock:
            self.pairs_scored += n
            self._window.append((now, n))
            self._trim(now)

    def pairs_per_s(self, now: float | None = None) -> float:
        """Throughput over the last minute (or since start, when younger than a minute)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            total = sum(n for _, n in self._window)
        span = min(self.WINDOW_S, max(now - self.started_at, 1e-3))
        return total / span

    def _trim(self, now: float) -> None:
        while self._window and self._window[0][0] < now - self.WINDOW_S:
            self._window.popleft()


# ---- building results ------------------------------------------------------------------


class Scorer(Protocol):
    """What the runner needs from a loaded model (vlcurate.models.clip.ClipScorer fits)."""

    @property
    def fingerprint(self) -> str: ...

    @property
    def preprocessing(self) -> Any: ...

    def score(self, images: np.ndarray, texts: Sequence[str]) -> np.ndarray: ...


@dataclass
class Fetched:
    """An item's image after download (bytes) or the reason there is none."""

    data: bytes | None
    status: str = "ok"
    error: str | None = None


def build_results(
    items: Sequence[schemas.UnitItem],
    fetched: Sequence[Fetched],
    scorer: Scorer,
    batch_size: int = 256,
) -> list[schemas.ItemResult]:
    """One ItemResult per item, in order: a score for good pairs, the failure status for the rest.

    Decoding and scoring go through `score_pairs`, the very path the server's hidden checks and
    `vlcurate score` take, so an honest agent's statuses and scores are the coordinator's: an
    unreadable image gets the decoder's status, an empty caption is missing_text, and an image
    that could not be downloaded is fetch_error.
    """
    from vlcurate.score.memory import score_pairs

    images = [f.data if f.status == "ok" else None for f in fetched]
    scored = score_pairs(cast(Any, scorer), images, [it.caption for it in items], batch_size=batch_size)
    out: list[schemas.ItemResult] = []
    for item, f, p in zip(items, fetched, scored, strict=True):
        if f.status != "ok":
            out.append(schemas.ItemResult(item_id=item.item_id, status=cast(Any, f.status)))
        elif p.status != "ok":
            out.append(schemas.ItemResult(item_id=item.item_id, status=cast(Any, p.status)))
        elif p.score is None or not math.isfinite(p.score):
            log.warning("non-finite score for item %s; reporting it as a decode error", item.item_id)
            out.append(schemas.ItemResult(item_id=item.item_id, status="decode_error"))
        else:
            out.append(schemas.ItemResult(item_id=item.item_id, score=min(1.0, max(-1.0, p.score))))
    return out


# ---- the runner ------------------------------------------------------------------------


@dataclass
class RunSummary:
    """Why the loop ended and what it did.

    `points_credited` is what the server's ledger credited to this agent while it ran: credits
    that came after a submission (a unit verified when another replica arrived) included,
    reversals taken off. `points_total` is the contributor's balance on the server at the end. When
    the server could not be asked, `points_credited` falls back to what the submissions' answers
    said (`points_at_submit`) and `points_total` is None.
    """

    reason: Literal["max_units", "idle", "interrupted", "stopped"]
    units_done: int
    pairs_scored: int
    points_credited: float
    points_total: float | None = None
    points_at_submit: float = 0.0
    contributor: str | None = None

    def final_line(self) -> str:
        """The line `vlcurate agent run` ends with; it starts as it always did, up to "points credited"."""
        head = (
            f"agent stopped ({self.reason}): {self.units_done} units, {self.pairs_scored} pairs, "
            f"+{self.points_credited:.1f} points credited"
        )
        if self.points_total is None:
            return head + " (as the submissions reported; the server's final count was not reachable)"
        who = f" to {self.contributor}" if self.contributor else ""
        return head + f" while running; {self.points_total:.1f} credited{who} so far"


class _LeaseLost(Exception):
    """The lease expired or was taken away while working on it; drop the unit."""


ScorerLoader = Callable[[str, str, str], Scorer]


def _load_clip_scorer(name: str, device: str, precision: str) -> Scorer:
    from vlcurate.models.loader import load_scorer

    return load_scorer(name, device=device, precision=precision)  # type: ignore[arg-type]


class AgentRunner:
    """Runs the lease -> score -> submit loop against one server with one agent token."""

    def __init__(
        self,
        config: AgentConfig,
        client: PlatformClient | None = None,
        scorer_loader: ScorerLoader | None = None,
    ) -> None:
        self.config = config
        self.client = client or PlatformClient(
            config.server,
            config.token,
            timeout=config.timeout_s,
            retry=RetryPolicy(max_elapsed=config.retry_max_s),
            max_connections=max(8, config.fetch_concurrency + 4),
        )
        self._own_client = client is None
        self.stats = AgentStats()
        if self.client.on_retry is None:
            self.client.on_retry = self.stats.error
        self._load = scorer_loader or _load_clip_scorer
        self._scorers: dict[tuple[str, str], Scorer] = {}
        self._stop = threading.Event()
        self._interrupted = threading.Event()
        self._rng = random.Random()
        self._lease: schemas.Lease | None = None
        self._next: schemas.Lease | None = None  # leased with the last submission
        self._lease_lost = threading.Event()
        self._ledger_mark: int | None = None  # newest ledger entry of the contributor at start

    # ---- public --------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the loop to finish the current unit and stop (thread-safe)."""
        self._stop.set()

    def interrupt(self) -> None:
        """Ctrl-C / SIGTERM: stop now and hand the current lease back (thread- and signal-safe).

        Signal handlers also raise KeyboardInterrupt, but an import or model load that catches
        BaseException can swallow it; this flag is checked between the steps of a unit, so the
        lease is handed back even then.
        """
        self._interrupted.set()
        self._stop.set()

    def _check_interrupt(self) -> None:
        if self._interrupted.is_set():
            raise KeyboardInterrupt

    def run(self) -> RunSummary:
        """Work until a stop condition; KeyboardInterrupt releases the current lease and returns.

        Raises AuthError, PausedError and ModelMismatchError: conditions under which going on is
        pointless and the user has to act.
        """
        reason: Literal["max_units", "idle", "interrupted", "stopped"] = "stopped"
        summary: RunSummary | None = None
        try:
            try:
                self._refresh_me()
                self._ledger_mark = self._newest_ledger_id()
                reason = self._loop()
            except KeyboardInterrupt:
                reason = "interrupted"
                self.stats.state = "interrupted"
                log.info("interrupted; handing the current lease back")
            finally:
                self._release_current()
            self.stats.state = "asking the server for the final count"
            summary = self._final_summary(reason)
        except KeyboardInterrupt:  # a second Ctrl-C while counting: stop counting
            reason = "interrupted"
        finally:
            if self._own_client:
                self.client.close()
        self.stats.state = f"finished ({reason})"
        if summary is None:
            summary = RunSummary(
                reason,
                self.stats.units_done,
                self.stats.pairs_scored,
                self.stats.points_credited,
                points_at_submit=self.stats.points_credited,
            )
        return summary

    # ---- the final count -----------------------------------------------------------------
    _FINAL_RETRY = RetryPolicy(base=0.2, cap=1.0, max_elapsed=5.0)
    _LEDGER_PAGES = 100  # at 1,000 entries a page: far more than one session credits

    def _newest_ledger_id(self) -> int | None:
        """The contributor's newest ledger entry now (0: none yet); None when it cannot be read."""
        me = self.stats.me
        if me is None:
            return None
        try:
            newest = self.client.ledger(contributor=me.contributor, limit=1, retry=self._FINAL_RETRY)
        except PlatformError as exc:
            log.info("ledger not readable (%s); the final line shows the submissions' figures", exc)
            return None
        return newest[0].id if newest else 0

    def _credited_since(self, mark: int, contributor: str, agent_id: int) -> float:
        """Points the ledger credited to this agent after entry `mark` (reversals subtract)."""
        total = 0.0
        before: int | None = None
        for _ in range(self._LEDGER_PAGES):
            page = self.client.ledger(
                contributor=contributor, after_id=mark, before_id=before, limit=1000, retry=self._FINAL_RETRY
            )
            total += sum(e.points for e in page if e.agent_id == agent_id)
            if len(page) < 1000:
                break
            before = page[-1].id
        return total

    def _final_summary(self, reason: Literal["max_units", "idle", "interrupted", "stopped"]) -> RunSummary:
        """What the server finally credited while this agent ran, and the contributor's balance."""
        st = self.stats
        summary = RunSummary(
            reason, st.units_done, st.pairs_scored, st.points_credited, points_at_submit=st.points_credited
        )
        if self._ledger_mark is None or st.me is None:
            return summary
        try:
            credited = self._credited_since(self._ledger_mark, st.me.contributor, st.me.agent_id)
            me = self.client.me(retry=self._FINAL_RETRY)
        except PlatformError as exc:
            log.info("final count not available: %s", exc)
            return summary
        st.me = me
        summary.points_credited = credited
        summary.points_total = me.points
        summary.contributor = me.contributor
        return summary

    # ---- loop ----------------------------------------------------------------------------
    def _loop(self) -> Literal["max_units", "idle", "stopped"]:
        idle_since: float | None = None
        idle_attempt = 0
        while not self._stop.is_set():
            if self.config.max_units is not None and self.stats.units_done >= self.config.max_units:
                return "max_units"
            self.stats.state = "leasing"
            try:
                lease, self._next = self._next, None
                if lease is None:
                    lease = self.client.lease(self.config.task_id)
            except (UnavailableError, RateLimitedError) as exc:
                # A long outage or quota: keep the agent alive and try again later.
                self.stats.error(str(exc))
                wait = exc.retry_after if exc.retry_after is not None else self.config.idle_sleep_max
                self.stats.state = f"waiting {wait:.0f}s (server unavailable or rate limited)"
                log.warning("cannot lease: %s; waiting %.0fs", exc, wait)
                self._stop.wait(wait)
                continue
            if lease is None:
                now = time.monotonic()
                idle_since = now if idle_since is None else idle_since
                if self.config.max_idle_s is not None and now - idle_since >= self.config.max_idle_s:
                    return "idle"
                delay = min(self.config.idle_sleep_max, self.config.idle_sleep * 2 ** min(idle_attempt, 20))
                delay *= self._rng.uniform(0.75, 1.25)
                if self.config.max_idle_s is not None:
                    delay = max(0.05, min(delay, self.config.max_idle_s - (now - idle_since)))
                idle_attempt += 1
                self.stats.state = f"idle (no work; next try in {delay:.1f}s)"
                self._stop.wait(delay)
                continue
            idle_since, idle_attempt = None, 0
            self._work(lease)
        return "stopped"

    def _work(self, lease: schemas.Lease) -> None:
        self._lease = lease
        self._lease_lost.clear()
        self.stats.lease_id, self.stats.unit_id = lease.lease_id, lease.unit_id
        beat_stop = threading.Event()
        beat = threading.Thread(
            target=self._heartbeat, args=(lease, beat_stop), name="agent-heartbeat", daemon=True
        )
        beat.start()
        try:
            out = self._process(lease)
        except (_LeaseLost, ConflictError, NotFoundError) as exc:
            self.stats.units_dropped += 1
            self.stats.error(f"unit {lease.unit_id} dropped: {exc}")
            log.warning("unit %s dropped: %s", lease.unit_id, exc)
            self._lease = None  # nothing to hand back
            return
        except (UnavailableError, RateLimitedError, CancelledError) as exc:
            self.stats.units_dropped += 1
            self.stats.error(f"unit {lease.unit_id} abandoned: {exc}")
            log.warning("unit %s abandoned: %s", lease.unit_id, exc)
            self._release_current()
            return
        except (AuthError, PausedError, ModelMismatchError):
            raise
        except PlatformError as exc:  # e.g. 422/413: our submission is unacceptable; drop this unit
            self.stats.units_dropped += 1
            self.stats.error(f"unit {lease.unit_id} rejected: {exc}")
            log.error("unit %s rejected: %s", lease.unit_id, exc)
            self._release_current()
            return
        finally:
            beat_stop.set()
        self._lease = None
        self.stats.lease_id = self.stats.unit_id = None
        self._record(out, lease)

    def _process(self, lease: schemas.Lease) -> schemas.SubmissionOut:
        scorer = self._scorer_for(lease)
        self._check_interrupt()
        self.stats.state = f"fetching {len(lease.items)} images"
        fetched = self._fetch(lease)
        self._check_interrupt()
        self._check_lease()
        self.stats.state = f"scoring {len(lease.items)} pairs"
        results = build_results(lease.items, fetched, scorer, self.config.batch_size)
        n_ok = sum(r.status == "ok" for r in results)
        self.stats.add_pairs(len(results))
        shown = [PairView(it.caption, r.score, r.status) for it, r in zip(lease.items, results, strict=True)]
        for pv in shown[-3:]:
            self.stats.recent_pairs.append(pv)
        ok_pairs = [p for p in shown if p.status == "ok"]
        self.stats.last_pair = ok_pairs[-1] if ok_pairs else (shown[-1] if shown else None)
        self._check_interrupt()
        self._check_lease()
        submission = schemas.SubmissionIn(
            idempotency_key=f"l{lease.lease_id}-{uuid.uuid4().hex}",
            model_fingerprint=scorer.fingerprint,
            agent_version=__version__,
            results=results,
        )
        self.stats.state = f"submitting {len(results)} results ({n_ok} scored)"
        if not self._wants_more():
            return self.client.submit(lease.lease_id, submission)
        # Report and ask for more in one call; the next unit is worked on next.
        out = self.client.submit_and_lease(lease.lease_id, submission, self.config.task_id)
        self._next = out.next
        return out.submission

    def _wants_more(self) -> bool:
        """Whether another unit will be worked on after this one (else don't lease one)."""
        if self._stop.is_set():
            return False
        limit = self.config.max_units
        return limit is None or self.stats.units_done + 1 < limit

    def _record(self, out: schemas.SubmissionOut, lease: schemas.Lease) -> None:
        st = self.stats
        st.units_done += 1
        st.points_credited += out.points_credited
        st.submissions[out.state] = st.submissions.get(out.state, 0) + 1
        log.info(
            "unit %d: %d pairs, %s (%s), +%.1f points; %d units, %.1f pairs/s",
            lease.unit_id,
            len(lease.items),
            out.state,
            out.detail,
            out.points_credited,
            st.units_done,
            st.pairs_per_s(),
        )
        if st.units_done % self.config.me_every == 0:
            self._refresh_me()

    def _refresh_me(self) -> None:
        try:
            self.stats.me = self.client.me()
        except (AuthError, PausedError):
            raise
        except PlatformError as exc:
            self.stats.error(f"me: {exc}")
            return
        if self.stats.me.paused:
            raise PausedError(403, self.stats.me.pause_reason or "paused")

    # ---- pieces --------------------------------------------------------------------------
    def _scorer_for(self, lease: schemas.Lease) -> Scorer:
        """The pinned model (or the override), loaded once; its weights must match the task's fingerprint."""
        name = self.config.model or lease.task.model
        want = lease.task.model_fingerprint
        # Fingerprints are taken from the weights as loaded, before any precision cast, so one
        # load at the configured precision is enough.
        key = (name, self.config.precision)
        if key not in self._scorers:
            self.stats.state = f"loading model {name} ({self.config.precision})"
            log.info("loading model %s (%s) on %s", name, self.config.precision, self.config.device)
            self._heartbeat_now()
            self._scorers[key] = self._load(name, self.config.device, self.config.precision)
        scorer = self._scorers[key]
        if scorer.fingerprint == want:
            self.stats.model, self.stats.fingerprint = name, scorer.fingerprint
            return scorer
        seen = [scorer.fingerprint[:12]]
        self._release_current()
        raise ModelMismatchError(
            f"task {lease.task.id} pins model {lease.task.model!r} with fingerprint {want[:12]}, but "
            f"{name!r} loaded here has {', '.join(seen)}; the task needs exactly that model "
            "(drop --model, or get the same weights)"
        )

    def _fetch(self, lease: schemas.Lease) -> list[Fetched]:
        """Download every item's image concurrently; failures become statuses, never exceptions.

        Caption-less items are fetched too: a broken image outranks a missing caption in the
        status the coordinator expects (as in `vlcurate score`).
        """
        retry = RetryPolicy(max_elapsed=min(self.config.retry_max_s or 120.0, 120.0))

        def one(url: str) -> Fetched:
            if self._lease_lost.is_set():
                return Fetched(None, "fetch_error", "lease lost")
            try:
                return Fetched(self.client.image(url, retry=retry))
            except (AuthError, PausedError, ConflictError):
                raise
            except PlatformError as exc:
                return Fetched(None, "fetch_error", str(exc))

        todo: queue.SimpleQueue[tuple[int, str]] = queue.SimpleQueue()
        for i, it in enumerate(lease.items):
            todo.put((i, it.image_url))
        out: list[Fetched] = [Fetched(None, "fetch_error", "not fetched")] * len(lease.items)
        fatal: list[BaseException] = []
        quit_ = threading.Event()

        def worker() -> None:
            while not quit_.is_set():
                try:
                    i, url = todo.get_nowait()
                except queue.Empty:
                    return
                try:
                    out[i] = one(url)
                except BaseException as exc:
                    fatal.append(exc)
                    quit_.set()

        # Daemon threads, not a ThreadPoolExecutor: after Ctrl-C the process must exit at once,
        # and the interpreter would otherwise wait for a download stuck on a slow server.
        n = min(self.config.fetch_concurrency, todo.qsize())
        threads = [threading.Thread(target=worker, name="agent-fetch", daemon=True) for _ in range(n)]
        for t in threads:
            t.start()
        try:
            for t in threads:
                t.join()
        finally:
            quit_.set()
        if fatal:
            raise fatal[0]
        failed = [f for f in out if f.status != "ok"]
        if failed:
            self.stats.error(f"unit {lease.unit_id}: {len(failed)} image(s) not fetched: {failed[0].error}")
        return out

    def _check_lease(self) -> None:
        if self._lease_lost.is_set():
            raise _LeaseLost("the server no longer holds this lease for us (expired or taken back)")

    def _heartbeat(self, lease: schemas.Lease, stop: threading.Event) -> None:
        """Renew the lease every heartbeat_seconds until the unit is done; a 409/404 means it is gone."""
        interval = max(1.0, float(lease.heartbeat_seconds))
        retry = RetryPolicy(max_elapsed=interval)
        while not stop.wait(interval):
            try:
                self.client.heartbeat(lease.lease_id, retry=retry)
            except (ConflictError, NotFoundError) as exc:
                if stop.is_set():
                    # The unit was submitted while this renewal was in flight (e.g. retrying through
                    # an outage): a 409 is expected then, and must not mark the *next* lease lost.
                    return
                self._lease_lost.set()
                self.stats.error(f"heartbeat: lease {lease.lease_id} lost: {exc}")
                return
            except PlatformError as exc:
                self.stats.error(f"heartbeat: {exc}")
            except Exception as exc:  # never let the heartbeat thread die silently
                self.stats.error(f"heartbeat: {type(exc).__name__}: {exc}")

    def _heartbeat_now(self) -> None:
        """One renewal before a long step (model loading), so a short lease survives it."""
        if self._lease is not None:
            with contextlib.suppress(PlatformError):
                self.client.heartbeat(self._lease.lease_id, retry=RetryPolicy(max_elapsed=5.0))

    def _release_current(self) -> None:
        """Hand back the lease being worked on and the next one, if the server gave one already."""
        for lease in (self._lease, self._next):
            if lease is not None:
                self._release(lease)
        self._lease = self._next = None
        self.stats.lease_id = self.stats.unit_id = None

    def _release(self, lease: schemas.Lease) -> None:
        try:
            self.client.release(lease.lease_id, retry=RetryPolicy(base=0.2, cap=2.0, max_elapsed=10.0))
            log.info("lease %d handed back (unit %d)", lease.lease_id, lease.unit_id)
        except PlatformError as exc:  # expired or already submitted: nothing to hand back
            log.info("lease %d not handed back: %s", lease.lease_id, exc)
