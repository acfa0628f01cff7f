"""Write a task's verified scores in exactly the layout `vlcurate score` writes (score table per
shard, completion markers, summary.json), so `vlcurate filter` and `vlcurate reshard` use them
unchanged. A shard is written only once every one of its pairs is verified, unless asked otherwise."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from sqlalchemy import select
from sqlalchemy.engine import Engine

from vlcurate import __version__
from vlcurate.base.atomic import write_json_atomic, write_parquet_atomic
from vlcurate.base.records import SCORE_SCHEMA
from vlcurate.score.run_dir import RunDir
from vlcurate.score.stats import merge_markers, score_histogram
from vlcurate.server import db
from vlcurate.server.errors import NotFound

UNVERIFIED = "unverified"


def _verified_by_item(engine: Engine, task_id: int) -> dict[int, tuple[float | None, str]]:
    out: dict[int, tuple[float | None, str]] = {}
    U = db.units
    with engine.connect() as conn:
        rows = conn.execute(
            select(U.c.first_item, U.c.verified_scores, U.c.verified_status).where(
                U.c.task_id == task_id, U.c.state == "verified"
            )
        )
        for first, blob, status in rows:
            scores = np.frombuffer(blob, dtype="<f4")
            status = status or {}
            for k, s in enumerate(scores):
                if np.isfinite(s):
                    out[first + k] = (float(s), "ok")
                else:
                    out[first + k] = (None, status.get(str(k), "decode_error"))
    return out


def export_task(
    engine: Engine, task_name: str, out_dir: str | Path, *, partial: bool = False
) -> dict[str, Any]:
    """Export verified scores of `task_name`; returns the summary (also written to summary.json)."""
    T, It = db.tasks, db.items
    with engine.connect() as conn:
        task = conn.execute(select(T).where(T.c.name == task_name)).first()
        if task is None:
            raise NotFound(f"no task named {task_name!r}")
        items = conn.execute(
            select(It.c.id, It.c.uid, It.c.shard, It.c.key, It.c.caption, It.c.width, It.c.height)
            .where(It.c.dataset_id == task.dataset_id)
            .order_by(It.c.id)
        ).all()
        dataset = conn.execute(select(db.datasets).where(db.datasets.c.id == task.dataset_id)).one()
    verified = _verified_by_item(engine, task.id)
    run = RunDir(out_dir)
    run.create()
    write_json_atomic(
        run.root / "run.json",
        {
            "input": dataset.source,
            "model": task.model,
            "model_fingerprint": task.model_fingerprint,
            "preprocessing": task.preprocessing,
            "source": f"vlcurate platform task {task.name!r} (verified by quorum and hidden checks)",
        },
    )
    by_shard: dict[str, list[Any]] = {}
    for it in items:
        by_shard.setdefault(it.shard, []).append(it)
    written, incomplete = [], []
    for shard, rows in by_shard.items():
        missing = sum(r.id not in verified for r in rows)
        if missing and not partial:
            incomplete.append({"shard": shard, "unverified": missing})
            continue
        seen: set[str] = set()
        cols: dict[str, list[Any]] = {f.name: [] for f in SCORE_SCHEMA}
        dups = 0
        for r in rows:
            if r.uid in seen:
                dups += 1
                continue
            seen.add(r.uid)
            score, status = verified.get(r.id, (None, UNVERIFIED))
            cols["uid"].append(r.uid)
            cols["score"].append(score)
            cols["status"].append(status)
            cols["error"].append(None if status in ("ok", UNVERIFIED) else f"agents reported {status}")
            cols["text"].append(r.caption)
            cols["width"].append(r.width)
            cols["height"].append(r.height)
            cols["key"].append(r.key)
            cols["source"].append(f"{r.shard}#{r.key}")
        table = pa.table(cols, schema=SCORE_SCHEMA)
        write_parquet_atomic(run.score_path(shard), table)
        ok = np.array([s for s in cols["score"] if s is not None], dtype=np.float32)
        write_json_atomic(
            run.marker_path(shard),
            {
                "shard": shard,
                "rows": len(cols["uid"]),
                "samples_read": len(rows),
                "duplicates": dups,
                "counts": dict(Counter(cols["status"])),
                "histogram": score_histogram(ok),
                "error": None,
                "model_fingerprint": task.model_fingerprint,
                "finished_at": time.time(),
            },
        )
        written.append(shard)
    summary: dict[str, Any] = {
        "input": dataset.source,
        "out": str(run.root),
        "task": task.name,
        "shards_total": len(by_shard),
        "shards_done": len(written),
        "shards_missing": sorted(s["shard"] for s in incomplete),
        "incomplete": incomplete,
        **merge_markers([m for m in run.markers() if m.get("shard") in set(written)]),
        "model": {"name": task.model, "fingerprint": task.model_fingerprint},
        "preprocessing": task.preprocessing,
        "versions": {"vlcurate": __version__},
    }
    write_json_atomic(run.root / "summary.json", summary)
    return summary
