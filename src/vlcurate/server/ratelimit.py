"""Per-agent token buckets. In-process: with several server workers each holds its own buckets,
so the effective limit is the per-agent rate times the worker count (documented in the README).

A key is any hashable value: the agent's id for its request rate, `("images", agent id)` for its
image rate, so one limiter holds several key spaces that never share a bucket."""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable


class RateLimiter:
    """Allow `rate_per_minute` requests per key on average, with bursts of up to a tenth of it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def check(self, key: Hashable, rate_per_minute: int, now: float | None = None) -> float:
        """Take one token; return 0 when allowed, else the seconds until one is available."""
        now = time.monotonic() if now is None else now
        rate = rate_per_minute / 60.0
        burst = max(5.0, rate_per_minute / 10.0)
        with self._lock:
            tokens, last = self._buckets.get(key, (burst, now))
            tokens = min(burst, tokens + (now - last) * rate)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / rate
