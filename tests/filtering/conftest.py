"""Fixtures for the filter tests: a `vlcurate score` run dir with known scores."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from filter_tables import hex_uids, write_scores


@pytest.fixture
def score_run(tmp_path: Path) -> Callable[..., tuple[Path, list[str], np.ndarray]]:
    """A `vlcurate score` run dir with several shards of scores rounded to 2 decimals (many ties)."""

    def make(n_shards: int = 4, per_shard: int = 250, seed: int = 1) -> tuple[Path, list[str], np.ndarray]:
        rng = np.random.default_rng(seed)
        run = tmp_path / "run"
        all_uids: list[str] = []
        all_scores: list[np.ndarray] = []
        for s in range(n_shards):
            uids = hex_uids(per_shard, seed=seed * 100 + s).to_pylist()
            uids = [f"{s:02x}{u[2:]}" for u in uids]
            sc = np.round(rng.uniform(-0.3, 0.6, per_shard), 2).astype(np.float32)
            write_scores(run / "scores" / f"{s:08d}.parquet", uids, sc)
            all_uids += uids
            all_scores.append(sc)
        (run / "summary.json").write_text("{}")
        return run, all_uids, np.concatenate(all_scores)

    return make
