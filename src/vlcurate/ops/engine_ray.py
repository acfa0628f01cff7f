"""The Ray Data engine: the same recipe as the local engine, on a Ray cluster, with the same outputs.

Why it is built this way:

* Shards are read by Ray tasks calling the local readers (`open_source(...).iter_samples`), so every
  input kind works, in the local engine's batches (`BATCH_ROWS` from the start of each shard). Rows
  carry hidden `_vlc_*` columns: shard, batch and row number, a last-row flag, which step dropped
  them and per-step seconds. Operators never see those columns.
* Each stage (as the local engine splits a recipe at its global steps) is as few `map_batches` as
  it can be, because each boundary copies every row (images included) through the object store:
  the read task also runs the CPU steps before the first model step, and each model step
  (`uses_model`) runs in an actor pool, whose actors load the model once, together with the CPU
  steps after it (`_segments`). Ray may merge or split blocks, so a stage function regroups rows
  into the local engine's batches before calling operators: scores are computed on the same
  batches, bit for bit.
* CPU requests: a model actor asks for half a CPU (`_ACTOR_CPUS`) and a read task for a whole one
  where that fits beside it (`_read_cpus`): on a 2-CPU machine an actor pool whose actors each take
  a whole CPU leaves nothing to the read tasks, and Ray Data waits forever; reads asking for less
  make Ray start a worker process per slot, which costs more than the reading. Actors start while
  the reads already run (no `wait_for_min_actors_s`), so reading overlaps loading the model.
* The driver consumes the stream, reassembles each shard in row order and writes it to the stage
  spool (`out/stages/NN/SHARD.parquet`, atomic) as soon as its last row has arrived; memory is
  bounded by the shards in flight, and a killed run repeats only unfinished shards of the
  unfinished stage. A global step observes the previous spool on the driver, in the local engine's
  shard and batch order, and decides; the decided operator is shipped to the workers for `process`.
  So the kept set is exactly the local engine's. The decisions, subset and report are written by
  the local engine's own `_finish`.

On a real cluster `sink.out` must be a path every worker can read (a shared file system), because
the stage after a global step reads the spool the driver wrote; the source can be any fsspec URL.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.io.sources import open_source
from vlcurate.ops.base import Operator, StepError, keep_mask, run_step
from vlcurate.ops.engine_local import (
    RunResult,
    StepStats,
    _finish,
    _read_shard,
    _read_stage,
    _stages,
    _table,
)
from vlcurate.ops.recipe import Recipe
from vlcurate.pipeline.run_dir import write_parquet_atomic

HIDDEN = "_vlc_"
SHARD, BATCH, SEQ, LAST, DROP = "_vlc_shard", "_vlc_batch", "_vlc_seq", "_vlc_last", "_vlc_drop"
KEPT, DROPPED_BEFORE = -1, -2  # DROP values for rows no step of this stage dropped
_TASK_CPUS = 1.0  # a read task is one Python thread: one core, so a 2-CPU node runs one beside a model
_SMALL_TASK_CPUS = 0.25  # on nodes with under 1.5 CPUs, where a whole-CPU read could not run beside one
_ACTOR_CPUS = 0.5  # a model actor: its threads are the model's own business (torch sets them)
_MAX_BLOCK_BYTES = 1 << 30  # big enough that Ray never splits one local batch of full-size photos


class RayEngineError(RuntimeError):
    """Ray is missing, the cluster cannot be reached, or a step failed on a worker."""


def _sec(step: int) -> str:
    return f"{HIDDEN}sec_{step:03d}"


def _hidden(table: pa.Table) -> list[str]:
    return [c for c in table.column_names if c.startswith(HIDDEN)]


# --- worker side ---------------------------------------------------------------------------------


def _tag(table: pa.Table, shard: int, batch: int, seq0: int, last: bool, steps: list[int]) -> pa.Table:
    """Add the hidden columns to one local-engine batch of one shard."""
    n = table.num_rows
    is_last = np.zeros(n, dtype=bool)
    if last and n:
        is_last[-1] = True
    drop = np.where(keep_mask(table), KEPT, DROPPED_BEFORE).astype(np.int16)
    cols: dict[str, pa.Array] = {
        SHARD: pa.array(np.full(n, shard, dtype=np.int32)),
        BATCH: pa.array(np.full(n, batch, dtype=np.int32)),
        SEQ: pa.array(np.arange(seq0, seq0 + n, dtype=np.int64)),
        LAST: pa.array(is_last),
        DROP: pa.array(drop),
    }
    for i in steps:
        cols[_sec(i)] = pa.array(np.zeros(n, dtype=np.float64))
    for name, col in cols.items():
        table = table.append_column(name, col)
    return table


def _read_batches(
    items: pa.Table,
    *,
    source: Any,
    shards: list[Any],
    previous: str | None,
    steps: list[int],
    ops: list[tuple[int, Operator]],
) -> Iterator[pa.Table]:
    """Read task: shard indexes in, the local engine's batches of those shards out (tagged), with
    the stage's CPU steps before its first model step already applied."""
    if ops:
        _ensure_setup(ops)
    prev = Path(previous) if previous is not None else None
    for idx in items.column("shard_index").to_pylist():
        shard = shards[idx]
        try:
            batches = _read_shard(prev, source, shard)
            pending: pa.Table | None = None
            b = seq = 0
            for table in batches:
                if table.num_rows == 0:
                    continue
                if pending is not None:
                    yield _run_ops(_tag(pending, idx, b, seq, False, steps), ops)
                    b, seq = b + 1, seq + pending.num_rows
                pending = table
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"reading shard {shard.name}: {type(exc).__name__}: {exc}") from exc
        if pending is not None:
            yield _run_ops(_tag(pending, idx, b, seq, True, steps), ops)


def _runs(batch: pa.Table) -> list[tuple[int, int]]:
    """Row ranges of one (shard, batch) each: the local engine's batches, whatever Ray did to blocks."""
    n = batch.num_rows
    if n == 0:
        return []
    key = batch.column(SHARD).to_numpy().astype(np.int64) << 32 | batch.column(BATCH).to_numpy()
    cuts = np.flatnonzero(key[1:] != key[:-1]) + 1
    bounds = [0, *cuts.tolist(), n]
    return list(itertools.pairwise(bounds))


def _run_ops(batch: pa.Table, ops: list[tuple[int, Operator]]) -> pa.Table:
    """Apply `ops` to each local batch inside a Ray batch; record drops and seconds in hidden columns."""
    if not ops:
        return batch
    outs = []
    for start, end in _runs(batch):
        part = batch.slice(start, end - start)
        hidden = _hidden(part)
        data = part.drop_columns(hidden)
        drop = part.column(DROP).to_numpy().copy()
        secs: dict[str, np.ndarray] = {}
        where = part.column("shard")[0].as_py() if "shard" in part.column_names else "?"
        for i, op in ops:
            before = keep_mask(data)
            t = time.perf_counter()
            data = run_step(op, data, i + 1, where)
            dt = time.perf_counter() - t
            if data.num_rows != part.num_rows:
                raise StepError(
                    f"step {i + 1} ({op.name}) returned {data.num_rows} rows for {part.num_rows}; "
                    f"operators mark rows, they never remove them"
                )
            drop[before & ~keep_mask(data)] = i
            sec = np.zeros(part.num_rows, dtype=np.float64)
            sec[0] = dt
            secs[_sec(i)] = sec
        for name in hidden:
            if name == DROP:
                data = data.append_column(name, pa.array(drop))
            else:
                data = data.append_column(name, pa.array(secs[name]) if name in secs else part.column(name))
        outs.append(data)
    if not outs:
        return batch
    return pa.concat_tables(outs, promote_options="default")


def _setup_all(ops: list[tuple[int, Operator]]) -> None:
    for i, op in ops:
        try:
            op.setup()
        except Exception as exc:
            raise StepError(
                f"step {i + 1} ({op.name}) failed to set up: {type(exc).__name__}: {exc}"
            ) from exc


def _ensure_setup(ops: list[tuple[int, Operator]]) -> None:
    """`setup` once per deserialised copy of the operators (a task may get a fresh copy each time)."""
    if getattr(_ensure_setup, "_ready", None) is not ops:
        _setup_all(ops)
        _ensure_setup._ready = ops  # type: ignore[attr-defined]


class _ModelActor:
    """Model operators in an actor: the model is loaded once, in `__init__`, then reused for every batch."""

    def __init__(self, ops: list[tuple[int, Operator]]) -> None:
        self.ops = ops
        _setup_all(ops)

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _run_ops(batch, self.ops)


# --- driver side ---------------------------------------------------------------------------------


@dataclass
class _Collector:
    """Reassembles shards from the stream (row order restored) and writes each one when complete."""

    spool: Path
    shards: list[Any]
    stats: list[StepStats]
    steps: list[int]
    parts: dict[int, list[pa.Table]] = field(default_factory=dict)
    seen: dict[int, set[int]] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)
    written: set[int] = field(default_factory=set)

    def add(self, batch: pa.Table) -> None:
        if batch.num_rows == 0:
            return
        shard_ids = batch.column(SHARD).to_numpy()
        for idx in np.unique(shard_ids).tolist():
            sel = batch.filter(pa.array(shard_ids == idx))
            seen = self.seen.setdefault(idx, set())
            seqs = sel.column(SEQ).to_numpy()
            fresh = np.array([q not in seen for q in seqs.tolist()], dtype=bool)
            if idx in self.written or not fresh.any():
                continue  # a retried task's repeat of rows we already have: same data, counted once
            if not fresh.all():
                sel, seqs = sel.filter(pa.array(fresh)), seqs[fresh]
            seen.update(seqs.tolist())
            self._count(sel)
            self.parts.setdefault(idx, []).append(sel)
            last = sel.filter(sel.column(LAST))
            if last.num_rows:
                self.expected[idx] = int(last.column(SEQ)[0].as_py()) + 1
            if len(seen) == self.expected.get(idx):
                self._write(idx)

    def _count(self, rows: pa.Table) -> None:
        """Per-step counts as the local engine's `_apply` makes them, from the drop column."""
        drop = rows.column(DROP).to_numpy()
        for i in self.steps:
            st = self.stats[i]
            saw = int(((drop == KEPT) | (drop >= i)).sum())
            dropped = int((drop == i).sum())
            st.saw += saw
            st.dropped += dropped
            st.kept += saw - dropped
            st.seconds += float(pc.sum(rows.column(_sec(i))).as_py() or 0.0)

    def _write(self, idx: int) -> None:
        table = pa.concat_tables(self.parts.pop(idx), promote_options="default")
        table = table.take(pc.sort_indices(table, sort_keys=[(SEQ, "ascending")]))
        write_parquet_atomic(
            self.spool / f"{self.shards[idx].name}.parquet", table.drop_columns(_hidden(table))
        )
        self.written.add(idx)
        self.seen[idx] = set()  # free it; `written` remembers the shard

    def close(self, todo: list[int]) -> None:
        """After the stream ended: shards that gave no rows are empty; anything else is a lost shard."""
        for idx in todo:
            if idx in self.written:
                continue
            if self.seen.get(idx):
                raise RayEngineError(
                    f"shard {self.shards[idx].name}: {len(self.seen[idx])} rows arrived, "
                    f"{self.expected.get(idx, 'an unknown number')} expected"
                )
            empty = _table({"uid": [], "key": [], "text": [], "image": [], "shard": []})
            write_parquet_atomic(self.spool / f"{self.shards[idx].name}.parquet", empty)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # the Data library is an extra of ray
    except ImportError as exc:
        raise RayEngineError(
            f"--engine ray needs Ray Data, which is not installed ({exc}); "
            f"install it with: pip install 'ray[data]'"
        ) from None
    return ray


@contextlib.contextmanager
def _ray_session(ray: Any, address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Join the running Ray instance, connect to `address`, or start a local one (and stop it after)."""
    if ray.is_initialized():
        yield
        return
    try:
        if address is None:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True)
        else:
            ray.init(address=address, include_dashboard=False)
    except Exception as exc:  # ConnectionError, a ray:// timeout, a bad address, ...
        where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
        hint = ""
        if "Ray Client requires" in str(exc):  # a ray:// address without the client extra
            hint = "; a ray:// address needs Ray Client: pip install 'ray[client]'"
        raise RayEngineError(f"cannot start or reach {where}: {type(exc).__name__}: {exc}{hint}") from None
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def _data_context(ray: Any, progress: bool) -> Iterator[None]:
    """Settings this engine needs, restored afterwards (the context is process-wide)."""
    ctx = ray.data.DataContext.get_current()
    wanted = {
        "enable_progress_bars": progress,
        "raise_original_map_exception": True,  # our StepError, not Ray's generic UserCodeException
        "target_max_block_size": max(ctx.target_max_block_size or 0, _MAX_BLOCK_BYTES),
        # Actors start while the read tasks already run (a positive wait would hold every read until
        # the model is loaded); a pool that can never start fails on Ray Data's own no-progress
        # guard (`execution_no_progress_timeout_s`, 30 minutes by default) instead of hanging.
        "wait_for_min_actors_s": -1,
    }
    saved = {k: getattr(ctx, k) for k in wanted}
    try:
        for k, v in wanted.items():
            setattr(ctx, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(ctx, k, v)


def _segments(
    stage: list[tuple[int, Operator]],
) -> tuple[list[tuple[int, Operator]], list[list[tuple[int, Operator]]]]:
    """Where each step runs: CPU steps before the stage's first model step in the read task, and
    each model step together with the CPU steps after it in one actor pool.

    Why: every `map_batches` boundary is a copy of every row (images included) through the object
    store and, for tasks, worker processes of their own; a cheap filter after a model step costs
    less in the model's actor than the hop to a task, and CPU steps before it scale with the read
    tasks.
    """
    lead: list[tuple[int, Operator]] = []
    groups: list[list[tuple[int, Operator]]] = []
    for item in stage:
        if item[1].uses_model:
            groups.append([item])
        elif groups:
            groups[-1].append(item)
        else:
            lead.append(item)
    return lead, groups


def _model_resources(ray: Any, ops: list[tuple[int, Operator]]) -> dict[str, Any]:
    """One actor per GPU when the cluster has GPUs (and no step pins the CPU), else one per node."""
    pool = ray.data.ActorPoolStrategy
    gpus = int(ray.cluster_resources().get("GPU", 0))
    on_cpu = any(str(getattr(op.params, "device", "auto")) == "cpu" for _, op in ops)
    if gpus >= 1 and not on_cpu:
        return {"num_gpus": 1, "num_cpus": _ACTOR_CPUS, "compute": pool(min_size=1, max_size=gpus)}
    # On CPUs a model uses every core of its node (torch threads), so more than one actor per node
    # only adds contention.
    nodes = sum(1 for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0)
    return {"num_cpus": _ACTOR_CPUS, "compute": pool(min_size=1, max_size=max(1, nodes))}


def _read_cpus(ray: Any) -> float:
    """CPUs a read task asks for: a whole one where it fits beside a model actor on every node.

    Why not less: each fractional slot lets Ray start one more worker process, and on a small machine
    starting processes (each imports Ray, pyarrow and the operators) costs more than reading. Why not
    the actor's request: Ray Data would fuse the read into the actor, and the read would wait for the
    model to load instead of running while it loads.
    """
    cpus = [
        n["Resources"]["CPU"] for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU")
    ]
    return _TASK_CPUS if cpus and min(cpus) >= _TASK_CPUS + _ACTOR_CPUS else _SMALL_TASK_CPUS


def _step_error(exc: BaseException) -> str | None:
    """The StepError message somewhere in a Ray exception's causes, if there is one."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        text = str(e).strip()
        marker = f"{StepError.__name__}: "  # Ray's copies carry the remote traceback before it
        if marker in text:
            return text[text.rindex(marker) + len(marker) :].splitlines()[0]
        if isinstance(e, StepError):
            return text
        stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
    return None


def _run_stage(
    ray: Any,
    source: Any,
    shards: list[Any],
    todo: list[int],
    previous: Path | None,
    stage: list[tuple[int, Operator]],
    collector: _Collector,
) -> None:
    steps = [i for i, _ in stage]
    lead, groups = _segments(stage)
    ds = ray.data.from_items([{"shard_index": i} for i in todo], override_num_blocks=len(todo))
    read = functools.partial(
        _read_batches,
        source=source,
        shards=shards,
        previous=str(previous) if previous is not None else None,
        steps=steps,
        ops=lead,
    )
    pools = [_model_resources(ray, group) for group in groups]
    ds = ds.map_batches(read, batch_size=1, batch_format="pyarrow", num_cpus=_read_cpus(ray))
    for group, resources in zip(groups, pools, strict=True):
        ds = ds.map_batches(
            _ModelActor,
            fn_constructor_args=(group,),
            batch_size=None,
            batch_format="pyarrow",
            **resources,
        )
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        collector.add(batch)
    collector.close(todo)


def run_recipe_ray(
    recipe: Recipe, address: str | None = None, num_cpus: int | None = None, *, progress: bool = True
) -> RunResult:
    """Run `recipe` on Ray Data; writes what the local engine writes (decisions, subset, report).

    `address`: None starts a local instance (`num_cpus` of this machine, all by default) unless one
    is already running in this process; "auto" or "ray://host:port" joins a cluster.
    """
    ray = _import_ray()
    out = Path(recipe.sink.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    source = open_source(recipe.source.input, kind=recipe.source.kind, **recipe.source.options)
    shards = source.shards()
    ops = recipe.operators()
    stats = [StepStats(op.name) for op in ops]
    index = {id(op): i for i, op in enumerate(ops)}
    previous: Path | None = None
    with _ray_session(ray, address, num_cpus), _data_context(ray, progress):
        for s, stage_ops in enumerate(_stages(ops)):
            spool = out / "stages" / f"{s:02d}"
            spool.mkdir(parents=True, exist_ok=True)
            head = stage_ops[0] if stage_ops and stage_ops[0].kind == "global" else None
            if head is not None:  # on the driver, in the local engine's order: exact, and the same
                head.setup()
                for batch in _read_stage(previous, source, shards):
                    head.observe(batch)
                head.finalize()
            todo = [i for i, sh in enumerate(shards) if not (spool / f"{sh.name}.parquet").exists()]
            if todo:
                stage = [(index[id(op)], op) for op in stage_ops]
                collector = _Collector(spool, shards, stats, [i for i, _ in stage])
                try:
                    _run_stage(ray, source, shards, todo, previous, stage, collector)
                except RayEngineError:
                    raise
                except Exception as exc:
                    message = _step_error(exc)
                    if message is None:
                        raise RayEngineError(f"stage {s} failed: {type(exc).__name__}: {exc}") from exc
                    raise RayEngineError(message) from exc
            previous = spool
    return _finish(recipe, Path(recipe.sink.out), previous, shards, stats, ops)
