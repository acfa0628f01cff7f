"""Fault injection for robustness tests: per-request probabilities, drawn from a seeded stream."""

from __future__ import annotations

import random
import threading

FAULT_KINDS: tuple[str, ...] = ("429", "500", "timeout", "malformed", "empty")


def parse_faults(spec: str) -> dict[str, float]:
    """'429=0.1,500=0.05,timeout=0.02' -> {'429': 0.1, ...}; probabilities must sum to <= 1."""
    out: dict[str, float] = {}
    for item in (spec or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or name not in FAULT_KINDS:
            raise ValueError(
                f"bad fault {item.strip()!r}: expected KIND=P with KIND one of {', '.join(FAULT_KINDS)}"
            )
        try:
            p = float(value)
        except ValueError:
            raise ValueError(f"bad fault probability in {item.strip()!r}") from None
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"fault probability must be in [0, 1]: {item.strip()!r}")
        out[name] = p
    if sum(out.values()) > 1.0 + 1e-9:
        raise ValueError(f"fault probabilities sum to {sum(out.values()):.3f} > 1")
    return out


class FaultPlan:
    """Draws at most one fault per request; the n-th request's fault depends only on seed and n."""

    def __init__(self, faults: dict[str, float], seed: int = 0) -> None:
        self.faults = {k: p for k, p in faults.items() if p > 0}
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.counts: dict[str, int] = {k: 0 for k in FAULT_KINDS}
        self.requests = 0

    def draw(self) -> str | None:
        with self._lock:
            self.requests += 1
            u = self._rng.random()
            acc = 0.0
            for kind, p in self.faults.items():
                acc += p
                if u < acc:
                    self.counts[kind] += 1
                    return kind
            return None
