"""The local engine: run a recipe over every shard of its source on this machine.

Steps run batch by batch. A `global` step (top fraction, dataset-wide dedup) splits the recipe into
stages: every batch of the stage before it is written to a stage spool (Parquet per shard), the
global step observes them all, decides, and the next stage reads the spool. So expensive steps
(model scores) run once, and a global decision is the same whatever the shard order.

Resumable per shard and stage: a spool file is written atomically and counts as done when it
exists, so a killed run repeats only unfinished shards of the unfinished stage.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.io.sources import open_source
from vlcurate.io.subset import write_subset
from vlcurate.ops.base import KEEP, REASON, Operator, keep_mask, run_step
from vlcurate.ops.recipe import Recipe
from vlcurate.ops.report import write_report
from vlcurate.pipeline.progress import ScoreProgress
from vlcurate.pipeline.run_dir import write_parquet_atomic

BATCH_ROWS = 1024


@dataclass
class StepStats:
    """What one step saw, kept and dropped (rows still kept when they reached it)."""

    op: str
    saw: int = 0
    kept: int = 0
    dropped: int = 0
    seconds: float = 0.0


@dataclass
class RunResult:
    out: Path
    rows: int
    kept: int
    steps: list[StepStats] = field(default_factory=list)
    subset: Path | None = None
    instruct: dict[str, Any] | None = None  # sink.instruct_format: where the samples went, counts


def _samples_to_batches(source: Any, shard: Any) -> Iterator[pa.Table]:
    # A source may carry more columns (instruction data: messages, meta, ...) in each sample's meta.
    extra: dict[str, pa.DataType] = dict(getattr(source, "extra_columns", None) or {})
    rows: dict[str, list[Any]] = {k: [] for k in ("uid", "key", "text", "image", "shard", *extra)}
    for s in source.iter_samples(shard):
        rows["uid"].append(s.uid)
        rows["key"].append(s.key)
        rows["text"].append(s.text)
        rows["image"].append(s.image)
        rows["shard"].append(shard.name)
        for c in extra:
            rows[c].append(s.meta.get(c))
        if len(rows["uid"]) >= BATCH_ROWS:
            yield _table(rows, extra)
            rows = {k: [] for k in rows}
    if rows["uid"]:
        yield _table(rows, extra)


def _table(rows: dict[str, list[Any]], extra: dict[str, pa.DataType] | None = None) -> pa.Table:
    columns = {
        "uid": pa.array(rows["uid"], pa.string()),
        "key": pa.array(rows["key"], pa.string()),
        "text": pa.array(rows["text"], pa.string()),
        "image": pa.array(rows["image"], pa.binary()),
        "shard": pa.array(rows["shard"], pa.string()),
    }
    for name, dtype in (extra or {}).items():
        columns[name] = pa.array(rows[name], dtype)
    return pa.table(columns)


def _stages(ops: list[Operator]) -> list[list[Operator]]:
    """Split so that each global step starts a stage."""
    stages: list[list[Operator]] = [[]]
    for op in ops:
        if op.kind == "global" and stages[-1]:
            stages.append([])
        stages[-1].append(op)
    return stages


def _apply(op: Operator, batch: pa.Table, stats: StepStats, step: int, shard: str) -> pa.Table:
    before = keep_mask(batch)
    t = time.perf_counter()
    out = run_step(op, batch, step, shard)
    stats.seconds += time.perf_counter() - t
    after = keep_mask(out)
    stats.saw += int(before.sum())
    stats.kept += int((before & after).sum())
    stats.dropped += int((before & ~after).sum())
    return out


def run_recipe(recipe: Recipe, *, progress: bool = False) -> RunResult:
    """Run `recipe`; writes decisions per shard, the kept subset and a report under `recipe.sink.out`."""
    out = Path(recipe.sink.out)
    out.mkdir(parents=True, exist_ok=True)
    source = open_source(recipe.source.input, kind=recipe.source.kind, **recipe.source.options)
    shards = source.shards()
    ops = recipe.operators()
    for op in ops:
        op.setup()
    stats = [StepStats(op.name) for op in ops]
    index = {id(op): i for i, op in enumerate(ops)}
    stages = _stages(ops)
    previous: Path | None = None
    for s, stage in enumerate(stages):
        spool = out / "stages" / f"{s:02d}"
        spool.mkdir(parents=True, exist_ok=True)
        head = stage[0] if stage and stage[0].kind == "global" else None
        if head is not None:
            for batch in _read_stage(previous, source, shards):
                head.observe(batch)
            head.finalize()
        todo = [sh for sh in shards if not (spool / f"{sh.name}.parquet").exists()]  # others: done before
        label = f"stage {s + 1}/{len(stages)}: {', '.join(op.name for op in stage)}"
        with ScoreProgress(enabled=progress, total_shards=len(todo), label=label) as bar:
            t0, pairs = time.perf_counter(), 0
            for shard in todo:
                target = spool / f"{shard.name}.parquet"
                parts = []
                for batch in _read_shard(previous, source, shard):
                    for op in stage:
                        i = index[id(op)]
                        batch = _apply(op, batch, stats[i], i + 1, shard.name)
                    parts.append(batch)
                    pairs += batch.num_rows
                    bar.update_pairs(pairs, time.perf_counter() - t0)
                table = (
                    pa.concat_tables(parts, promote_options="default")
                    if parts
                    else _table({"uid": [], "key": [], "text": [], "image": [], "shard": []})
                )
                write_parquet_atomic(target, table)
                bar.shard_done(table.num_rows)
        previous = spool
    return _finish(recipe, out, previous, shards, stats, ops)


def _read_stage(previous: Path | None, source: Any, shards: list[Any]) -> Iterator[pa.Table]:
    for shard in shards:
        yield from _read_shard(previous, source, shard)


def _read_shard(previous: Path | None, source: Any, shard: Any) -> Iterator[pa.Table]:
    if previous is None:
        yield from _samples_to_batches(source, shard)
        return
    pf = pq.ParquetFile(previous / f"{shard.name}.parquet")
    for rb in pf.iter_batches(batch_size=BATCH_ROWS):
        yield pa.Table.from_batches([rb])


def _finish(
    recipe: Recipe,
    out: Path,
    last: Path | None,
    shards: list[Any],
    stats: list[StepStats],
    ops: list[Operator],
) -> RunResult:
    decisions = out / "decisions"
    decisions.mkdir(exist_ok=True)
    kept_uids: list[str] = []
    rows = 0
    reasons: Counter[str] = Counter()
    stat_columns = [c for op in ops for c in op.stat_columns()]
    stat_values: dict[str, list[np.ndarray]] = {c: [] for c in stat_columns}
    keeps: list[np.ndarray] = []
    sink = None
    if recipe.sink.instruct_format is not None:
        from vlcurate.instruct.writer import RunSink

        sink = RunSink(out, recipe.sink.instruct_format)
    for shard in shards:
        assert last is not None
        table = pq.read_table(last / f"{shard.name}.parquet")
        if KEEP not in table.column_names:
            table = table.append_column(KEEP, pa.array(np.ones(table.num_rows, dtype=bool)))
            table = table.append_column(REASON, pa.array([None] * table.num_rows, pa.string()))
        keep = keep_mask(table)
        keeps.append(keep)
        rows += table.num_rows
        kept_uids += [u for u, k in zip(table.column("uid").to_pylist(), keep, strict=True) if k]
        reasons.update(r for r in table.column(REASON).to_pylist() if r)
        for c in stat_columns:
            if c in table.column_names:
                stat_values[c].append(
                    np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                )
        if sink is not None:
            sink.add_table(table)
        bulky = [c for c in ("image", "extra_images") if c in table.column_names]
        write_parquet_atomic(decisions / f"{shard.name}.parquet", table.drop_columns(bulky))
    subset = out / "subset.npy"
    write_subset(subset, kept_uids)
    all_keep = np.concatenate(keeps) if keeps else np.zeros(0, dtype=bool)
    write_report(
        out,
        recipe_path=recipe.path,
        source=recipe.source.model_dump(),
        steps=[s.__dict__ for s in stats],
        rows=rows,
        kept=len(kept_uids),
        reasons=reasons,
        stats={c: (np.concatenate(v), all_keep) for c, v in stat_values.items() if v},
    )
    instruct = sink.close() if sink is not None else None
    return RunResult(out, rows, len(kept_uids), stats, subset, instruct)
