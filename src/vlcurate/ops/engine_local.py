"""The local engine: run a recipe over every shard of its source on this machine.

Steps run batch by batch. A `global` step (top fraction, dataset-wide dedup) splits the recipe into
stages: every batch of the stage before it is written to a stage spool (Parquet per shard), the
global step observes them all, decides, and the next stage reads the spool. So expensive steps
(model scores) run once, and a global decision is the same whatever the shard order.

Loading, fingerprints, resume and the report are `ops.engine`'s, shared with the Ray engine: a
killed or changed run repeats only the shards whose outputs are missing or were made differently.
"""

from __future__ import annotations

import time
from typing import Any

import pyarrow as pa

from vlcurate.base.progress import ScoreProgress
from vlcurate.ops.engine import (
    BATCH_ROWS,
    Engine,
    RunResult,
    ShardInput,
    Stage,
    StepStats,
    empty_table,
    load_batches,
    timed_step,
)
from vlcurate.ops.recipe import Recipe

__all__ = ["BATCH_ROWS", "LocalEngine", "RunResult", "StepStats", "load_batches", "run_recipe"]


class LocalEngine(Engine):
    """Shards one after another in this process, each batch through every step of the stage."""

    def run_stage(self, stage: Stage, todo: list[Any], previous: Stage | None) -> None:
        label = f"stage {stage.index + 1}: {', '.join(stage.names)}"
        with ScoreProgress(enabled=self.progress, total_shards=len(todo), label=label) as bar:
            t0, pairs = time.perf_counter(), 0
            for shard in todo:
                stats = [StepStats(op.name) for _, op in stage.steps]
                rows = ShardInput(self.source, shard, previous.path if previous else None, self.fetch)
                parts = []
                for batch in rows:
                    for k, (i, op) in enumerate(stage.steps):
                        batch = timed_step(op, batch, stats[k], i + 1, shard.name)
                    parts.append(batch)
                    pairs += batch.num_rows
                    bar.update_pairs(pairs, time.perf_counter() - t0)
                table = pa.concat_tables(parts, promote_options="default") if parts else empty_table()
                stage.write(shard, table, stats, rows.error)
                if rows.error is not None:
                    bar.shard_failed(shard.name, rows.error)
                bar.shard_done(table.num_rows)


def run_recipe(recipe: Recipe, *, progress: bool = False, retry_failed: bool = False) -> RunResult:
    """Run `recipe`; writes decisions per shard, the kept subset and a report under `recipe.sink.out`.
    `retry_failed`: load again the shards whose pairs failed to download (HTTP errors, timeouts)."""
    engine = LocalEngine(recipe, progress=progress)
    engine.retry_failed = retry_failed
    return engine.run()
