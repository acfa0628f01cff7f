"""The bounded mode's memory must not grow with the number of rows (100k vs 1M)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filter_tables import hex_uids

from vlcurate.ops.score_filter import run_filter
from vlcurate.ops.score_filter_config import FilterConfig


def _compact_scores(path: Path, n: int) -> Path:
    """uid, score (3 decimals: many ties), status, written in 64k-row groups without Python objects."""
    rng = np.random.default_rng(n)
    status = pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int8)), pa.array(["ok"]))
    table = pa.table(
        {
            "uid": hex_uids(n, seed=n),
            "score": pa.array(np.round(rng.normal(0.2, 0.08, n), 3).clip(-1, 1).astype(np.float32)),
            "status": status.cast(pa.string()),
        }
    )
    pq.write_table(table, path, row_group_size=65_536)
    return path


def _peak(path: Path, out: Path, bounded: bool) -> tuple[int, int]:
    cfg = FilterConfig(top_fraction=0.1, bounded_memory=bounded, plot=False)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        res = run_filter(path, out, cfg)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, res.kept


@pytest.mark.slow
def test_bounded_memory_does_not_grow_with_rows(tmp_path: Path) -> None:
    small = _compact_scores(tmp_path / "small.parquet", 100_000)
    large = _compact_scores(tmp_path / "large.parquet", 1_000_000)
    peak_small, kept_small = _peak(small, tmp_path / "os", bounded=True)
    peak_large, kept_large = _peak(large, tmp_path / "ol", bounded=True)
    assert kept_small >= 10_000 and kept_large >= 100_000
    # 10x the rows (and 10x the kept uids, spooled to disk): the peak stays within 25% + 2 MB.
    assert peak_large <= 1.25 * peak_small + 2 * 2**20, (peak_small, peak_large)
    # The in-memory mode, measured the same way, does grow (it holds every score): the metric sees rows.
    peak_mem_large, kept_mem = _peak(large, tmp_path / "ml", bounded=False)
    assert kept_mem == kept_large
    assert peak_mem_large > peak_large + 4 * 2**20, (peak_large, peak_mem_large)
