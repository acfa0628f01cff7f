"""The exact global cut of a top fraction, in memory or in bounded memory.

Definition (both modes, so they agree bit for bit): among the N eligible values, k = ceil(F * N)
(F read as the decimal the user typed, so 0.1 * 10 is exactly 1); the threshold t is the k-th
largest eligible value; every row with value >= t is kept. Ties at t are all kept, so the kept
count is k plus the number of other rows equal to t: `#(value >= t)`, which is >= k and equals k
when t is not tied. This is one global threshold, like DataComp's `clip_score` baseline (which
uses the (floor(F*N)+1)-th largest), and independent of row order.

`ExactCut` is fed one pass over the data at a time (`feed` per batch, then `end_pass`), so an
engine can drive it. The first pass counts and finds the range and, while they fit the memory
budget, holds the values: then the cut is found at once. Past the budget (or when `bounded`) it
never holds the values: a histogram of `n_bins` bins over the range locates the bin holding the
k-th largest, one more pass collects only that bin's distinct values (with counts) and reads off
the exact value; a bin holding more than `collect_cap` rows is histogrammed again, finer, first.
Memory is O(n_bins + collect_cap), whatever N is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal

import numpy as np

MAX_LEVELS = 3


def target_count(fraction: float, n: int) -> int:
    """k = ceil(F * N) with F taken as the decimal it prints as (no binary rounding surprises)."""
    if n <= 0:
        return 0
    return min(n, math.ceil(Fraction(repr(float(fraction))) * n))


def kth_largest(values: np.ndarray, k: int) -> float:
    """Exact k-th largest value (1-based) of an in-memory array."""
    n = len(values)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..{n}")
    return float(np.partition(values, n - k)[n - k])


def bin_index(values: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Bin of each value over [lo, hi]; monotone non-decreasing in the value (values outside clip)."""
    x = np.floor((values - lo) / (hi - lo) * n_bins)
    return np.clip(x, 0, n_bins - 1).astype(np.int64)


def histogram(values: np.ndarray, n_bins: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Counts per bin (int64), for values already known to lie in the range."""
    return np.bincount(bin_index(values, lo, hi, n_bins), minlength=n_bins).astype(np.int64, copy=False)


@dataclass(frozen=True)
class Level:
    """One refinement step: rows whose bin over [lo, hi] is `bin` are still candidates."""

    lo: float
    hi: float
    bin: int
    n_bins: int

    def members(self, values: np.ndarray) -> np.ndarray:
        return bin_index(values, self.lo, self.hi, self.n_bins) == self.bin

    def sub_range(self) -> tuple[float, float]:
        w = (self.hi - self.lo) / self.n_bins
        return self.lo + self.bin * w, self.lo + (self.bin + 1) * w


def locate(hist: np.ndarray, need: int) -> tuple[int, int]:
    """Bin holding the `need`-th largest, and how many rows lie in higher bins."""
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, need))  # first position where the cumulative count >= need
    b = len(hist) - 1 - j
    above = int(from_top[j] - hist[b])
    return b, above


Phase = Literal["scan", "histogram", "collect", "done"]


class ExactCut:
    """The k-th largest of a stream of values, fed pass by pass (see the module docstring).

    `needs_pass` says whether the caller must feed every eligible value once more; after the last
    pass `threshold` holds the cut (None when k is 0) and `passes` how many passes it took.
    """

    def __init__(
        self,
        fraction: float,
        *,
        budget_bytes: float = 2048 * 2**20,
        bounded: bool = False,
        n_bins: int = 2**20,
        collect_cap: int = 2**20,
    ) -> None:
        self.fraction = fraction
        self.budget_values = int(budget_bytes // 8)
        self.bounded = bounded
        self.n_bins = n_bins
        self.collect_cap = collect_cap
        self.phase: Phase = "scan"
        self.count = 0
        self.k = 0
        self.passes = 0
        self.threshold: float | None = None
        self._lo, self._hi = math.inf, -math.inf
        self._held: list[np.ndarray] | None = None if bounded else []
        self._levels: list[Level] = []
        self._range = (0.0, 1.0)
        self._hist = np.zeros(0, dtype=np.int64)
        self._need = 0
        self._vals = np.empty(0, dtype=np.float64)
        self._cnts = np.empty(0, dtype=np.int64)

    @property
    def needs_pass(self) -> bool:
        return self.phase != "done"

    def feed(self, values: np.ndarray) -> None:
        """One batch of eligible (finite) values of the current pass."""
        v = np.asarray(values, dtype=np.float64)
        if not len(v):
            return
        if self.phase == "scan":
            self.count += len(v)
            self._lo, self._hi = min(self._lo, float(v.min())), max(self._hi, float(v.max()))
            if self._held is not None:
                if self.count > self.budget_values:
                    self._held = None  # over the budget: let the values go, cut in bounded memory
                    self.bounded = True
                else:
                    self._held.append(v)
        elif self.phase == "histogram":
            c = self._candidates(v)
            if len(c):
                lo, hi = self._range
                self._hist += np.bincount(bin_index(c, lo, hi, self.n_bins), minlength=self.n_bins)
        elif self.phase == "collect":
            c = self._candidates(v)
            if len(c):
                u, n = np.unique(c, return_counts=True)
                vals, inv = np.unique(np.concatenate([self._vals, u]), return_inverse=True)
                cnts = np.bincount(inv, weights=np.concatenate([self._cnts, n]), minlength=len(vals))
                self._vals, self._cnts = vals, cnts.astype(np.int64)

    def end_pass(self) -> None:
        """Close the pass just fed; decide the cut or what the next pass collects."""
        self.passes += 1
        if self.phase == "scan":
            self.k = target_count(self.fraction, self.count)
            if self.k == 0:
                self.phase = "done"
            elif self._held is not None:
                self.threshold = kth_largest(np.concatenate(self._held), self.k)
                self._held = None
                self.phase = "done"
            elif self._lo == self._hi:
                self.threshold = self._lo
                self.phase = "done"
            else:
                self._need = self.k
                self._range = (self._lo, self._hi)
                self._start_histogram()
        elif self.phase == "histogram":
            b, above = locate(self._hist, self._need)
            self._need -= above
            lo, hi = self._range
            self._levels.append(Level(lo, hi, b, self.n_bins))
            if int(self._hist[b]) <= self.collect_cap or len(self._levels) >= MAX_LEVELS:
                self.phase = "collect"
                self._hist = np.zeros(0, dtype=np.int64)
            else:
                self._range = self._levels[-1].sub_range()
                self._start_histogram()
        elif self.phase == "collect":
            from_top = np.cumsum(self._cnts[::-1])
            j = int(np.searchsorted(from_top, self._need))
            self.threshold = float(self._vals[::-1][j])
            self._vals, self._cnts = np.empty(0), np.empty(0, dtype=np.int64)
            self.phase = "done"

    def _start_histogram(self) -> None:
        self.phase = "histogram"
        self._hist = np.zeros(self.n_bins, dtype=np.int64)

    def _candidates(self, v: np.ndarray) -> np.ndarray:
        for lv in self._levels:
            v = v[lv.members(v)]
        return v


def quantiles_from_hist(
    hist: np.ndarray, qs: tuple[float, ...], lo: float = -1.0, hi: float = 1.0
) -> dict[str, float]:
    """Approximate quantiles (bin centres over [lo, hi]) of histogrammed values."""
    n = int(hist.sum())
    out: dict[str, float] = {}
    if n == 0:
        return out
    cum = np.cumsum(hist)
    w = (hi - lo) / len(hist)
    for q in qs:
        rank = min(n, max(1, math.ceil(q * n)))
        b = int(np.searchsorted(cum, rank))
        out[f"p{round(q * 100):g}"] = lo + (b + 0.5) * w
    return out
