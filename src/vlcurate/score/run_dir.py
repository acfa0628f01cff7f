"""The layout of a scoring run directory, and the atomic writes that make resume free.

    OUT/run.json              model, fingerprint, preprocessing, input (checked on resume)
    OUT/scores/NAME.parquet   one score table per input shard
    OUT/embeddings/NAME.parquet  optional float16 embeddings
    OUT/done/NAME.json        completion marker, written last: a shard is done iff it exists
                              (or partial: `partial` true, with its file's size and mtime)
    OUT/summary.json          counts, quantiles, throughput, model, preprocessing, versions
    OUT/report.md, report.html, plots/score.png   the same for people (ops.report)

A shard's table is written to a temporary file and renamed, then its marker is written the same
way, so a run killed at any moment (even by SIGKILL) leaves each shard either done or not started.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class RunDir:
    """Paths and atomic writers of one scoring run."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.scores = self.root / "scores"
        self.embeddings = self.root / "embeddings"
        self.done = self.root / "done"

    def create(self) -> None:
        for d in (self.root, self.scores, self.embeddings, self.done):
            d.mkdir(parents=True, exist_ok=True)
        for d in (self.scores, self.embeddings, self.done, self.root):
            for tmp in d.glob("*.tmp*"):
                tmp.unlink(missing_ok=True)  # left by a killed run

    def score_path(self, shard: str) -> Path:
        return self.scores / f"{shard}.parquet"

    def embedding_path(self, shard: str) -> Path:
        return self.embeddings / f"{shard}.parquet"

    def marker_path(self, shard: str) -> Path:
        return self.done / f"{shard}.json"

    def is_done(self, shard: str) -> bool:
        return self.marker_path(shard).exists() and self.score_path(shard).exists()

    def read_marker(self, shard: str) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self.marker_path(shard).read_text()))
        except (OSError, json.JSONDecodeError):
            return None

    def markers(self) -> list[dict[str, Any]]:
        out = []
        for p in sorted(self.done.glob("*.json")):
            try:
                out.append(json.loads(p.read_text()))
            except (OSError, json.JSONDecodeError):
                continue  # a marker is written atomically; an unreadable one is not ours
        return out

    def read_json(self, name: str) -> dict[str, Any] | None:
        p = self.root / name
        if not p.exists():
            return None
        return dict(json.loads(p.read_text()))
