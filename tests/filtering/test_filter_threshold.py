"""The exact cut: k = ceil(F*N), the k-th largest; the bounded mode must find the same value."""

from __future__ import annotations

import numpy as np
import pytest

from vlcurate.ops.exact_cut import ExactCut, bin_index, kth_largest, target_count


def test_target_count_uses_the_decimal_fraction() -> None:
    assert target_count(0.1, 10) == 1  # binary 0.1 is slightly above 1/10; ceil must not give 2
    assert target_count(0.3, 2997) == 900
    assert target_count(0.7, 10) == 7
    assert target_count(1.0, 5) == 5
    assert target_count(1e-9, 5) == 1
    assert target_count(0.5, 0) == 0


def test_bin_index_is_monotone() -> None:
    s = np.sort(np.random.default_rng(0).uniform(-1, 1, 100_000))
    s = np.concatenate([[-1.0, np.nextafter(-1.0, 0)], s, [np.nextafter(1.0, 0), 1.0]])
    idx = bin_index(s, -1.0, 1.0, 2**20)
    assert np.all(np.diff(idx) >= 0)
    assert idx[0] == 0 and idx[-1] == 2**20 - 1


def _bounded(scores: np.ndarray, k: int, n_bins: int, cap: int, batch: int = 997) -> float:
    """The k-th largest through `ExactCut` in bounded memory, fed pass by pass as an engine feeds it
    (a fraction half a row below k / N, so that ceil(F * N) is k)."""
    cut = ExactCut((k - 0.5) / len(scores), bounded=True, n_bins=n_bins, collect_cap=cap)
    while cut.needs_pass:
        for i in range(0, len(scores), batch):
            cut.feed(scores[i : i + batch])
        cut.end_pass()
    assert cut.k == k and cut.threshold is not None
    return cut.threshold


@pytest.mark.parametrize("cap", [1, 7, 2**20])
@pytest.mark.parametrize("n_bins", [16, 2**20])
def test_bounded_equals_sort_with_ties(cap: int, n_bins: int) -> None:
    rng = np.random.default_rng(3)
    scores = np.concatenate(
        [
            np.round(rng.uniform(-1, 1, 5000), 3),  # many ties
            rng.uniform(-1, 1, 3000).astype(np.float32).astype(np.float64),
            np.full(200, 0.25),
            [-1.0, 1.0, 1.0],
        ]
    )
    rng.shuffle(scores)
    desc = -np.sort(-scores)
    for k in [1, 2, 3, 50, 1234, 4000, len(scores) - 1, len(scores)]:
        assert kth_largest(scores, k) == desc[k - 1]
        assert _bounded(scores, k, n_bins, cap) == desc[k - 1], (k, n_bins, cap)


def test_bounded_all_equal_and_extremes() -> None:
    s = np.full(1000, 0.3)
    assert _bounded(s, 500, 2**20, 10) == 0.3
    s = np.array([-1.0] * 10 + [1.0] * 3)
    assert _bounded(s, 3, 2**20, 2) == 1.0
    assert _bounded(s, 4, 2**20, 2) == -1.0
