"""The exact global cut for `--top-fraction`, in memory or in bounded memory.

Definition (both modes, so they agree bit for bit): among the N eligible scores, k = ceil(F * N)
(F read as the decimal the user typed, so 0.1 * 10 is exactly 1); the threshold t is the k-th
largest eligible score; every row with score >= t is kept. Ties at t are all kept, so the kept
count is k plus the number of other rows equal to t: `#(score >= t)`, which is >= k and equals k
when t is not tied. This is one global threshold, like DataComp's `clip_score` baseline (which
uses the (floor(F*N)+1)-th largest), and independent of row order.

The bounded mode never holds the scores: a histogram of `hist_bins` bins over [-1, 1] locates the
bin holding the k-th largest; one more pass collects only that bin's distinct values (with counts)
and reads off the exact value. If that bin alone holds more than `collect_cap` rows, the bin is
histogrammed again (finer) before collecting. Memory is O(hist_bins + collect_cap), whatever N is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

MAX_LEVELS = 3


def target_count(fraction: float, n: int) -> int:
    """k = ceil(F * N) with F taken as the decimal it prints as (no binary rounding surprises)."""
    if n <= 0:
        return 0
    return min(n, math.ceil(Fraction(repr(float(fraction))) * n))


def kth_largest(scores: np.ndarray, k: int) -> float:
    """Exact k-th largest value (1-based) of an in-memory array."""
    n = len(scores)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} outside 1..{n}")
    return float(np.partition(scores, n - k)[n - k])


def bin_index(scores: np.ndarray, lo: float, hi: float, n_bins: int) -> np.ndarray:
    """Bin of each score over [lo, hi]; monotone non-decreasing in the score (values outside clip)."""
    x = np.floor((scores - lo) / (hi - lo) * n_bins)
    return np.clip(x, 0, n_bins - 1).astype(np.int64)


def histogram(scores: np.ndarray, n_bins: int, lo: float = -1.0, hi: float = 1.0) -> np.ndarray:
    """Counts per bin (int64), for scores already known to lie in the range."""
    return np.bincount(bin_index(scores, lo, hi, n_bins), minlength=n_bins).astype(np.int64, copy=False)


@dataclass(frozen=True)
class Level:
    """One refinement step: rows whose bin over [lo, hi] is `bin` are still candidates."""

    lo: float
    hi: float
    bin: int
    n_bins: int

    def members(self, scores: np.ndarray) -> np.ndarray:
        return bin_index(scores, self.lo, self.hi, self.n_bins) == self.bin

    def sub_range(self) -> tuple[float, float]:
        w = (self.hi - self.lo) / self.n_bins
        return self.lo + self.bin * w, self.lo + (self.bin + 1) * w


def _candidates(scores: np.ndarray, levels: list[Level]) -> np.ndarray:
    for lv in levels:
        scores = scores[lv.members(scores)]
    return scores


def locate(hist: np.ndarray, need: int) -> tuple[int, int]:
    """Bin holding the `need`-th largest, and how many rows lie in higher bins."""
    from_top = np.cumsum(hist[::-1])
    j = int(np.searchsorted(from_top, need))  # first position where the cumulative count >= need
    b = len(hist) - 1 - j
    above = int(from_top[j] - hist[b])
    return b, above


@dataclass(frozen=True)
class BoundedCut:
    """The exact threshold found in bounded memory, and how many extra passes it took."""

    threshold: float
    passes: int


def kth_largest_bounded(
    batches: Callable[[], Iterable[np.ndarray]],
    k: int,
    first_hist: np.ndarray,
    *,
    collect_cap: int = 2**20,
) -> BoundedCut:
    """Exact k-th largest of the scores that `batches()` streams (eligible scores only, in [-1, 1]).

    `first_hist` is the histogram over [-1, 1] from the caller's first pass; each call of
    `batches()` is one more pass over the data.
    """
    n_bins = len(first_hist)
    total = int(first_hist.sum())
    if not 1 <= k <= total:
        raise ValueError(f"k={k} outside 1..{total}")
    levels: list[Level] = []
    lo, hi = -1.0, 1.0
    hist = first_hist
    need = k
    passes = 0
    while True:
        b, above = locate(hist, need)
        need -= above
        levels.append(Level(lo, hi, b, n_bins))
        if int(hist[b]) <= collect_cap or len(levels) >= MAX_LEVELS:
            values, counts = _collect_distinct(batches(), levels)
            passes += 1
            # values ascending; the need-th largest
            from_top = np.cumsum(counts[::-1])
            j = int(np.searchsorted(from_top, need))
            return BoundedCut(float(values[::-1][j]), passes)
        lo, hi = levels[-1].sub_range()
        hist = np.zeros(n_bins, dtype=np.int64)
        for s in batches():
            c = _candidates(s, levels)
            if len(c):
                hist += np.bincount(bin_index(c, lo, hi, n_bins), minlength=n_bins)
        passes += 1


def _collect_distinct(stream: Iterable[np.ndarray], levels: list[Level]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct candidate values with their counts (bounded by the candidates of one bin)."""
    vals = np.empty(0, dtype=np.float64)
    cnts = np.empty(0, dtype=np.int64)
    for s in stream:
        c = _candidates(s, levels)
        if not len(c):
            continue
        v, n = np.unique(c, return_counts=True)
        allv = np.concatenate([vals, v])
        alln = np.concatenate([cnts, n])
        vals, inv = np.unique(allv, return_inverse=True)
        cnts = np.bincount(inv, weights=alln, minlength=len(vals)).astype(np.int64)
    return vals, cnts


def quantiles_from_hist(hist: np.ndarray, qs: Iterable[float]) -> dict[str, float]:
    """Approximate quantiles (bin centres over [-1, 1]) for the report in the bounded mode."""
    n = int(hist.sum())
    out: dict[str, float] = {}
    if n == 0:
        return out
    cum = np.cumsum(hist)
    w = 2.0 / len(hist)
    for q in qs:
        rank = min(n, max(1, math.ceil(q * n)))
        b = int(np.searchsorted(cum, rank))
        out[f"p{round(q * 100):g}"] = -1.0 + (b + 0.5) * w
    return out
