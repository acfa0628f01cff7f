"""Accounting and the adaptive concurrency limit of the VLM client.

Kept apart from the transport so that the numbers a run reports (requests, retries, errors by
kind, tokens, cost) and the rule that decides how many requests are in flight can each be read
and tested on their own.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from pydantic import BaseModel, Field


class UsageStats(BaseModel):
    """What a client has done so far; `cost` is in the currency of the settings' per-Mtok prices."""

    requests: int = 0  # HTTP requests sent (every attempt counts)
    results: int = 0  # `complete` calls answered (ok, cached or failed)
    ok: int = 0
    failed: int = 0
    cache_hits: int = 0
    retries: int = 0  # attempts beyond the first, for any reason
    errors: dict[str, int] = Field(default_factory=dict)  # by kind: "429", "500", "timeout", "empty" ...
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    concurrency: int = 0  # the live limit now
    min_concurrency: int = 0  # the lowest the live limit went
    max_concurrency: int = 0  # the configured upper bound
    structured_mode: str = "auto"  # what the client learnt: json_schema or prompt (auto: not yet known)
    cache_rebuilt: bool = False  # the cache file was unreadable and was set aside and rebuilt


class UsageCounter:
    """Mutable counters behind `UsageStats` (one event loop, so no locking is needed)."""

    def __init__(self) -> None:
        self.requests = 0
        self.results = 0
        self.ok = 0
        self.failed = 0
        self.cache_hits = 0
        self.retries = 0
        self.errors: Counter[str] = Counter()
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.cost = 0.0

    def snapshot(self, **extra: object) -> UsageStats:
        return UsageStats(
            requests=self.requests,
            results=self.results,
            ok=self.ok,
            failed=self.failed,
            cache_hits=self.cache_hits,
            retries=self.retries,
            errors=dict(sorted(self.errors.items())),
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            cost=round(self.cost, 10),
            **extra,
        )


class AdaptiveLimiter:
    """AIMD concurrency limit: halve on overload signals, +1 after each success while it is in use.

    Overload signals are 429s, 5xx answers and timeouts. A burst of failures from requests that
    were all sent before the last decrease counts once (the TCP rule: one decrease per window), so
    a single overloaded moment halves the limit once instead of collapsing it to 1. The increase
    (+1 per success while at least half the limit is in flight, as in Netflix's concurrency-limits
    AIMD) recovers within about one window, so scattered faults (a flaky proxy, a few 500s) do not
    pin the limit low, while a server that keeps answering 429 keeps it halved. The limit starts
    at the upper bound and never goes below 1.
    """

    def __init__(self, upper: int) -> None:
        if upper < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {upper}")
        self.upper = upper
        self.limit = upper
        self.lowest = upper
        self.in_flight = 0
        self.epoch = 0  # bumped at every decrease
        self._cond: asyncio.Condition | None = None

    def _condition(self) -> asyncio.Condition:
        if self._cond is None:  # created lazily inside the running loop
            self._cond = asyncio.Condition()
        return self._cond

    async def acquire(self) -> int:
        """Wait for a free slot; returns the epoch the request is sent in (pass it to `release`)."""
        cond = self._condition()
        async with cond:
            await cond.wait_for(lambda: self.in_flight < self.limit)
            self.in_flight += 1
            return self.epoch

    async def release(self, epoch: int, outcome: str) -> None:
        """Free the slot; `outcome` is "ok", "overload" (429/5xx/timeout) or "neutral"."""
        cond = self._condition()
        async with cond:
            self.in_flight -= 1
            if outcome == "overload":
                if epoch == self.epoch:
                    self.limit = max(1, self.limit // 2)
                    self.lowest = min(self.lowest, self.limit)
                    self.epoch += 1
            elif outcome == "ok" and self.limit < self.upper and 2 * (self.in_flight + 1) >= self.limit:
                self.limit += 1  # only while the limit is in use: idle slots prove nothing
            cond.notify_all()
