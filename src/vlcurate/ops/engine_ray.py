"""The Ray Data engine: the same recipe as the local engine, on a Ray cluster, with the same outputs.

Why it is built this way:

* Shards are read by Ray tasks calling the shared loader (`ops.engine.load_batches`: the readers of
  `open_source`, images by path or URL fetched), so every input kind works, in the local engine's
  batches (`BATCH_ROWS` from the start of each shard). Rows
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
  spool with its marker (`Stage.write`) as soon as its last row has arrived; memory is bounded by
  the shards in flight, and a killed or changed run repeats only the shards `ops.engine` finds
  missing or made differently. A global step observes the previous spool on the driver, in the
  local engine's shard and batch order, and decides; the decided operator is shipped to the
  workers for `process`. So the kept set is exactly the local engine's. Loading, resume, the
  decisions, subset and report are the shared `ops.engine.Engine`'s.
* A shard whose container breaks sends the rows read before the break, the last one carrying the
  error (`_vlc_err`); a shard that sent no rows is read once more on the driver for its error.

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

from vlcurate.ops.base import Operator, StepError, keep_mask, run_step, setup_step
from vlcurate.ops.engine import Engine, RunResult, ShardInput, Stage, StepStats, empty_table
from vlcurate.ops.recipe import FetchSpec, Recipe

HIDDEN = "_vlc_"
SHARD, BATCH, SEQ, LAST, DROP = "_vlc_shard", "_vlc_batch", "_vlc_seq", "_vlc_last", "_vlc_drop"
ERR = "_vlc_err"  # on a shard's last row: the error that cut the shard short
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


def _tag(
    table: pa.Table,
    shard: int,
    batch: int,
    seq0: int,
    last: bool,
    steps: list[int],
    error: str | None = None,
) -> pa.Table:
    """Add the hidden columns to one local-engine batch of one shard."""
    n = table.num_rows
    is_last = np.zeros(n, dtype=bool)
    errors: list[str | None] = [None] * n
    if last and n:
        is_last[-1] = True
        errors[-1] = error
    drop = np.where(keep_mask(table), KEPT, DROPPED_BEFORE).astype(np.int16)
    cols: dict[str, pa.Array] = {
        SHARD: pa.array(np.full(n, shard, dtype=np.int32)),
        BATCH: pa.array(np.full(n, batch, dtype=np.int32)),
        SEQ: pa.array(np.arange(seq0, seq0 + n, dtype=np.int64)),
        LAST: pa.array(is_last),
        DROP: pa.array(drop),
        ERR: pa.array(errors, pa.string()),
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
    fetch: FetchSpec | None,
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
        rows = ShardInput(source, shard, prev, fetch)
        try:
            pending: pa.Table | None = None
            b = seq = 0
            for table in rows:
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
            yield _run_ops(_tag(pending, idx, b, seq, True, steps, rows.error), ops)


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
        setup_step(op, i + 1)


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

    stage: Stage
    shards: list[Any]
    steps: list[int]
    parts: dict[int, list[pa.Table]] = field(default_factory=dict)
    seen: dict[int, set[int]] = field(default_factory=dict)
    expected: dict[int, int] = field(default_factory=dict)
    errors: dict[int, str] = field(default_factory=dict)
    stats: dict[int, list[StepStats]] = field(default_factory=dict)
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
            self._count(idx, sel)
            self.parts.setdefault(idx, []).append(sel)
            last = sel.filter(sel.column(LAST))
            if last.num_rows:
                self.expected[idx] = int(last.column(SEQ)[0].as_py()) + 1
                error = last.column(ERR)[0].as_py()
                if error is not None:
                    self.errors[idx] = error
            if len(seen) == self.expected.get(idx):
                self._write(idx)

    def _count(self, idx: int, rows: pa.Table) -> None:
        """Per-step counts as the local engine's `timed_step` makes them, from the drop column."""
        stats = self.stats.setdefault(
            idx, [StepStats(self.stage.steps[k][1].name) for k in range(len(self.steps))]
        )
        drop = rows.column(DROP).to_numpy()
        for st, i in zip(stats, self.steps, strict=True):
            saw = int(((drop == KEPT) | (drop >= i)).sum())
            dropped = int((drop == i).sum())
            st.saw += saw
            st.dropped += dropped
            st.kept += saw - dropped
            st.seconds += float(pc.sum(rows.column(_sec(i))).as_py() or 0.0)

    def _write(self, idx: int) -> None:
        table = pa.concat_tables(self.parts.pop(idx), promote_options="default")
        table = table.take(pc.sort_indices(table, sort_keys=[(SEQ, "ascending")]))
        stats = self.stats.pop(idx, None) or [StepStats(op.name) for _, op in self.stage.steps]
        self.stage.write(self.shards[idx], table.drop_columns(_hidden(table)), stats, self.errors.get(idx))
        self.written.add(idx)
        self.seen[idx] = set()  # free it; `written` remembers the shard

    def close(self, todo: list[int], probe: Any) -> None:
        """After the stream ended: a shard that sent no rows is empty, or failed with the error
        `probe(shard)` finds; a shard that sent only some of its rows is lost (an engine bug)."""
        for idx in todo:
            if idx in self.written:
                continue
            if self.seen.get(idx):
                raise RayEngineError(
                    f"shard {self.shards[idx].name}: {len(self.seen[idx])} rows arrived, "
                    f"{self.expected.get(idx, 'an unknown number')} expected"
                )
            stats = [StepStats(op.name) for _, op in self.stage.steps]
            self.stage.write(self.shards[idx], empty_table(), stats, probe(self.shards[idx]))


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


class RayEngine(Engine):
    """Each stage as a Ray Data pipeline: read tasks, then one actor pool per model step."""

    def __init__(
        self,
        recipe: Recipe,
        address: str | None = None,
        num_cpus: int | None = None,
        *,
        progress: bool = True,
    ) -> None:
        super().__init__(recipe, progress=progress)
        self.ray = _import_ray()
        self.address, self.num_cpus = address, num_cpus

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        with _ray_session(self.ray, self.address, self.num_cpus), _data_context(self.ray, self.progress):
            yield

    def prepare_stage(self, stage: Stage) -> None:
        """Only the global head runs on the driver; the other steps set up in their workers."""
        if stage.head is not None:
            setup_step(stage.head, stage.steps[0][0] + 1)

    def run_stage(self, stage: Stage, todo: list[Any], previous: Stage | None) -> None:
        shards = list(todo)
        collector = _Collector(stage, shards, [i for i, _ in stage.steps])
        try:
            self._stream(stage, shards, previous, collector)
        except RayEngineError:
            raise
        except Exception as exc:
            message = _step_error(exc)
            if message is None:
                raise RayEngineError(f"stage {stage.index} failed: {type(exc).__name__}: {exc}") from exc
            raise RayEngineError(message) from exc

    def _probe(self, previous: Stage | None) -> Any:
        def probe(shard: Any) -> str | None:
            rows = ShardInput(self.source, shard, previous.path if previous else None, self.fetch)
            for _ in rows:
                pass
            return rows.error

        return probe

    def _stream(self, stage: Stage, shards: list[Any], previous: Stage | None, collector: _Collector) -> None:
        ray = self.ray
        steps = [i for i, _ in stage.steps]
        lead, groups = _segments(stage.steps)
        ds = ray.data.from_items(
            [{"shard_index": i} for i in range(len(shards))], override_num_blocks=len(shards)
        )
        read = functools.partial(
            _read_batches,
            source=self.source,
            shards=shards,
            previous=str(previous.path) if previous is not None else None,
            fetch=self.fetch,
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
        collector.close(list(range(len(shards))), self._probe(previous))


def run_recipe_ray(
    recipe: Recipe,
    address: str | None = None,
    num_cpus: int | None = None,
    *,
    progress: bool = True,
    retry_failed: bool = False,
) -> RunResult:
    """Run `recipe` on Ray Data; writes what the local engine writes (decisions, subset, report).

    `address`: None starts a local instance (`num_cpus` of this machine, all by default) unless one
    is already running in this process; "auto" or "ray://host:port" joins a cluster.
    """
    engine = RayEngine(recipe, address, num_cpus, progress=progress)
    engine.retry_failed = retry_failed
    return engine.run()
