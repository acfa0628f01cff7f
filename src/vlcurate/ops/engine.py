"""What both recipe engines share: loading samples, stages, fingerprints, per-shard markers, the finish.

A recipe runs in stages (a `global` step starts one). Each stage writes, per input shard, its rows
(`out/stages/NN/SHARD.parquet`) and then a marker (`SHARD.json`) with the fingerprint of what made
them and the per-step counts of that shard. The fingerprint covers the input shard (path, size,
mtime), the steps up to that stage with their parameters, the models and files they load, and the
vlcurate version; a shard of a stage that starts with a global step also depends on every shard of
the stage before. A re-run reuses exactly the shards whose fingerprint is unchanged, re-runs the
others, and the report sums the markers of every shard, whichever run made them.

Samples are loaded one way for both engines (`load_batches`): the source's reader, then images
given by path or URL resolved by `io.fetch` as `vlcurate score` resolves them. A pair whose record or
image could not be loaded is dropped by `source` with the reason (`fetch_error: HTTP 404`) and
counted as failed; a shard that breaks keeps the rows read before the break and is reported.
"""

from __future__ import annotations

import contextlib
import json
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate import __version__
from vlcurate.base.atomic import write_json_atomic, write_parquet_atomic
from vlcurate.base.records import Sample, Status
from vlcurate.base.report import Histogram, ReportData, write_report
from vlcurate.io.sources import ShardReadError, open_source
from vlcurate.ops.base import (
    DROPPED_BY,
    KEEP,
    REASON,
    SOURCE,
    Operator,
    StepError,
    keep_mask,
    problem,
    setup_step,
)
from vlcurate.ops.fingerprint import digest, shard_identity
from vlcurate.ops.recipe import FetchSpec, Recipe
from vlcurate.ops.sink import RunSink

BATCH_ROWS = 1024
_FAILED = (Status.READ_ERROR, Status.FETCH_ERROR)


@dataclass
class StepStats:
    """What one step saw, kept and dropped (rows still kept when they reached it)."""

    op: str
    saw: int = 0
    kept: int = 0
    dropped: int = 0
    seconds: float = 0.0

    def add(self, other: dict[str, Any]) -> None:
        self.saw += int(other["saw"])
        self.kept += int(other["kept"])
        self.dropped += int(other["dropped"])
        self.seconds += float(other["seconds"])


@dataclass
class StageReport:
    """Which shards of a stage this run computed and which it reused from an earlier run."""

    steps: list[str]
    ran: int
    reused: int


@dataclass
class RunResult:
    out: Path
    rows: int
    kept: int
    steps: list[StepStats] = field(default_factory=list)
    subset: Path | None = None
    instruct: dict[str, Any] | None = None  # sink.instruct_format: where the samples went, counts
    stages: list[StageReport] = field(default_factory=list)
    failed_shards: dict[str, str] = field(default_factory=dict)  # shard -> error (partial or unread)
    failed_pairs: int = 0  # pairs whose record or image could not be loaded
    shards: dict[str, Any] | None = None  # sink.write_shards: where the kept pairs went, counts

    @property
    def partial(self) -> bool:
        """Some shards or pairs failed: `vlcurate run` exits with `EXIT_PARTIAL`."""
        return bool(self.failed_shards or self.failed_pairs)


# --- loading ---------------------------------------------------------------------------------------


def needs_images(recipe: Recipe, ops: list[Operator]) -> bool:
    """Whether any step (or the sink) reads image bytes: only then are paths and URLs fetched."""
    wanted = any("image" in (*op.requires, *op.required_columns()) for op in ops)
    return wanted or recipe.sink.write_shards or recipe.sink.instruct_format is not None


def load_batches(source: Any, shard: Any, fetch: FetchSpec | None) -> Iterator[pa.Table]:
    """The samples of one shard as batches of `BATCH_ROWS` (from the start of the shard), images by
    path or URL fetched when `fetch` is given. Raises `ShardReadError` after the rows it could read.
    A source that reads columns, not samples (score tables), gives its Arrow batches as they are."""
    if hasattr(source, "iter_tables"):
        yield from source.iter_tables(shard)
        return
    extra: dict[str, pa.DataType] = dict(getattr(source, "extra_columns", None) or {})
    chunk: list[Sample] = []
    try:
        for sample in source.iter_samples(shard):
            chunk.append(sample)
            if len(chunk) >= BATCH_ROWS:
                yield _batch(_resolve(chunk, fetch), shard.name, extra)
                chunk = []
    except (ShardReadError, OSError):
        if chunk:  # the rows before a broken container still count
            yield _batch(_resolve(chunk, fetch), shard.name, extra)
        raise
    if chunk:
        yield _batch(_resolve(chunk, fetch), shard.name, extra)


def _resolve(samples: list[Sample], fetch: FetchSpec | None) -> list[Sample]:
    if fetch is None:
        return samples
    from vlcurate.io.fetch import resolve_images

    return resolve_images(
        samples, concurrency=fetch.concurrency, timeout=fetch.timeout, retries=fetch.retries
    )


def _batch(samples: list[Sample], shard: str, extra: dict[str, pa.DataType]) -> pa.Table:
    columns: dict[str, pa.Array] = {
        "uid": pa.array([s.uid for s in samples], pa.string()),
        "key": pa.array([s.key for s in samples], pa.string()),
        "text": pa.array([s.text for s in samples], pa.string()),
        "image": pa.array([s.image for s in samples], pa.binary()),
        "shard": pa.array([shard] * len(samples), pa.string()),
        # where the pair is in the input (`SHARD#MEMBER`, `FILE#row=N`, a path), when the reader says
        "source": pa.array([getattr(s, "source", None) for s in samples], pa.string()),
    }
    for name, dtype in extra.items():  # instruction data: messages, meta, ..., and its own keep/reason
        columns[name] = pa.array([s.meta.get(name) for s in samples], dtype)
    if KEEP not in extra:
        failed = [s.status in _FAILED for s in samples]
        columns[KEEP] = pa.array([not f for f in failed], pa.bool_())
        columns[REASON] = pa.array(
            [f"{s.status.value}: {s.error}" if f else None for s, f in zip(samples, failed, strict=True)],
            pa.string(),
        )
    keep = columns[KEEP].to_pylist()
    columns[DROPPED_BY] = pa.array([None if k else SOURCE for k in keep], pa.string())
    return pa.table(columns)


def retryable_loads(table: pa.Table) -> int:
    """Rows the loader could not load for a transient reason (a download that failed or timed out):
    what `--retry-failed` fetches again."""
    if DROPPED_BY not in table.column_names or not table.num_rows:
        return 0
    by_source = pc.fill_null(pc.equal(table.column(DROPPED_BY), SOURCE), False)
    reason = pc.fill_null(table.column(REASON), "")
    prefix = f"{Status.FETCH_ERROR.value}: "
    fetch = pc.and_(pc.starts_with(reason, prefix), pc.invert(pc.starts_with(reason, prefix + "too large")))
    return int(pc.sum(pc.and_(by_source, fetch)).as_py() or 0)


def failed_loads(table: pa.Table) -> int:
    """Rows of a stage's output that the loader could not load (a record or an image)."""
    if DROPPED_BY not in table.column_names or not table.num_rows:
        return 0
    by_source = pc.fill_null(pc.equal(table.column(DROPPED_BY), SOURCE), False)
    reason = pc.fill_null(table.column(REASON), "")
    failed = pc.or_(*(pc.starts_with(reason, f"{s.value}: ") for s in _FAILED))
    return int(pc.sum(pc.and_(by_source, failed)).as_py() or 0)


class ShardInput:
    """The batches of one shard for a stage: loaded (first stage) or read from the previous stage's
    spool. A container error after some rows ends the iteration and is kept in `error`."""

    def __init__(self, source: Any, shard: Any, previous: Path | None, fetch: FetchSpec | None) -> None:
        self.source, self.shard, self.previous, self.fetch = source, shard, previous, fetch
        self.error: str | None = None

    def __iter__(self) -> Iterator[pa.Table]:
        if self.previous is not None:
            pf = pq.ParquetFile(self.previous / f"{self.shard.name}.parquet")
            # rows without images are small: read them in big batches
            rows = BATCH_ROWS if "image" in pf.schema_arrow.names else 64 * BATCH_ROWS
            for rb in pf.iter_batches(batch_size=rows):
                yield pa.Table.from_batches([rb])
            return
        try:
            yield from load_batches(self.source, self.shard, self.fetch)
        except ShardReadError as exc:
            self.error = str(exc)
        except OSError as exc:
            self.error = problem(exc)


def empty_table() -> pa.Table:
    return pa.table(
        {
            "uid": pa.array([], pa.string()),
            "key": pa.array([], pa.string()),
            "text": pa.array([], pa.string()),
            "image": pa.array([], pa.binary()),
            "shard": pa.array([], pa.string()),
        }
    )


# --- stages ----------------------------------------------------------------------------------------


@dataclass
class Stage:
    """Steps up to and including the ones before the next global step, and their per-shard outputs."""

    index: int
    steps: list[tuple[int, Operator]]  # (0-based step number, operator)
    fingerprint: str
    path: Path
    shard_fps: dict[str, str] = field(default_factory=dict)
    markers: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # shards that gave no rows, this run
    retry: bool = False  # `--retry-failed`: re-run shards whose rows include retryable failed loads

    @property
    def head(self) -> Operator | None:
        """The global step this stage starts with, if it does."""
        op = self.steps[0][1] if self.steps else None
        return op if op is not None and op.kind == "global" else None

    @property
    def names(self) -> list[str]:
        return [op.name for _, op in self.steps]

    def spool(self, shard: Any) -> Path:
        return self.path / f"{shard.name}.parquet"

    def prepare(self, source: Any, shards: list[Any], previous: Stage | None) -> None:
        """Fingerprint every shard; forget outputs of shards that are not in the input any more."""
        self.path.mkdir(parents=True, exist_ok=True)
        names = {sh.name for sh in shards}
        for f in self.path.iterdir():
            stem = f.name.removesuffix(".tmp").removesuffix(".parquet").removesuffix(".json")
            if f.is_file() and stem not in names:
                f.unlink()
        inputs = {
            sh.name: digest(shard_identity(source, sh)) if previous is None else previous.output_digest(sh)
            for sh in shards
        }
        if self.head is not None:  # a global decision depends on every shard before it
            common = digest([inputs[sh.name] for sh in shards])
            for sh in shards:
                self.shard_fps[sh.name] = digest([self.fingerprint, common, sh.name])
        else:
            for sh in shards:
                self.shard_fps[sh.name] = digest([self.fingerprint, inputs[sh.name]])
        for sh in shards:
            marker = self.path / f"{sh.name}.json"
            if marker.exists():
                with contextlib.suppress(ValueError):
                    self.markers[sh.name] = json.loads(marker.read_text())

    def done(self, shard: Any) -> bool:
        m = self.markers.get(shard.name)
        return (
            m is not None
            and m.get("fingerprint") == self.shard_fps.get(shard.name)
            and self.spool(shard).exists()
            and not (self.retry and m.get("retryable", 0))
        )

    def output_digest(self, shard: Any) -> str:
        m = self.markers[shard.name]
        return digest([m["fingerprint"], m["rows"], m.get("error"), m.get("failed_loads")])

    def write(self, shard: Any, table: pa.Table, stats: list[StepStats], error: str | None) -> None:
        """Write a shard's rows, then its marker; a shard that gave no rows and an error has failed
        (no marker: the next run tries it again)."""
        marker = self.path / f"{shard.name}.json"
        if error is not None and table.num_rows == 0:
            for p in (marker, self.spool(shard)):
                p.unlink(missing_ok=True)
            self.markers.pop(shard.name, None)
            self.failed[shard.name] = error
            return
        write_parquet_atomic(self.spool(shard), table)
        m = {
            "fingerprint": self.shard_fps[shard.name],
            "rows": table.num_rows,
            "error": error,
            "failed_loads": failed_loads(table),
            "retryable": retryable_loads(table),
            "vlcurate": __version__,
            "steps": [asdict(s) for s in stats],
        }
        write_json_atomic(marker, m)
        self.markers[shard.name] = m


def plan_stages(ops: list[Operator], out: Path, source: dict[str, Any]) -> list[Stage]:
    """Split so that each global step starts a stage; fingerprint each stage by everything up to it."""
    groups: list[list[tuple[int, Operator]]] = [[]]
    for i, op in enumerate(ops):
        if op.kind == "global" and groups[-1]:
            groups.append([])
        groups[-1].append((i, op))
    chain: list[Any] = [{"vlcurate": __version__, "source": source}]
    stages = []
    for s, group in enumerate(groups):
        chain += [op.fingerprint() for _, op in group]
        stages.append(Stage(s, group, digest(chain), out / "stages" / f"{s:02d}"))
    return stages


# --- the engine ------------------------------------------------------------------------------------


class Engine(ABC):
    """Runs a recipe stage by stage; a subclass says how one stage's shards are computed."""

    def __init__(self, recipe: Recipe, *, progress: bool = False) -> None:
        self.recipe = recipe
        self.progress = progress
        self.out = Path(recipe.sink.out).resolve()
        self.source: Any = None
        self.ops: list[Operator] = []
        self.fetch: FetchSpec | None = None
        # `--retry-failed`: shards whose pairs failed to load for a transient reason are loaded again
        self.retry_failed = False

    @abstractmethod
    def run_stage(self, stage: Stage, todo: list[Any], previous: Stage | None) -> None:
        """Compute `todo` shards of `stage` and `stage.write` each (the global head is decided)."""

    def prepare_stage(self, stage: Stage) -> None:
        """Before a stage with shards to compute: load what its steps need (the local engine: all)."""
        for i, op in stage.steps:
            setup_step(op, i + 1)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Around the whole run (the Ray engine: a Ray instance)."""
        yield

    def run(self) -> RunResult:
        rec = self.recipe
        self.out.mkdir(parents=True, exist_ok=True)
        self.source = open_source(rec.source.input, kind=rec.source.kind, **rec.source.options)
        shards = self.source.shards()
        self.ops = rec.operators()
        self.fetch = rec.source.fetch if needs_images(rec, self.ops) else None
        described = {"kind": rec.source.kind, "options": rec.source.options, "images": self.fetch is not None}
        stages = plan_stages(self.ops, self.out, described)
        for extra in sorted((self.out / "stages").glob("*")):  # a recipe with fewer stages now
            if extra.is_dir() and extra.name not in {st.path.name for st in stages}:
                for f in extra.iterdir():
                    f.unlink()
                extra.rmdir()
        reports: list[StageReport] = []
        available = shards
        previous: Stage | None = None
        with self.session():
            for stage in stages:
                stage.retry = self.retry_failed and previous is None
                stage.prepare(self.source, available, previous)
                todo = [sh for sh in available if not stage.done(sh)]
                if todo:
                    self.prepare_stage(stage)
                    self._decide(stage, previous, available)
                    self.run_stage(stage, todo, previous)
                ran = sum(1 for sh in todo if stage.done(sh))
                reports.append(StageReport(stage.names, ran, len(available) - len(todo)))
                available = [sh for sh in available if stage.done(sh)]
                previous = stage
        assert previous is not None
        return self._finish(stages, shards, available, reports)

    def _decide(self, stage: Stage, previous: Stage | None, shards: list[Any]) -> None:
        """A global head observes every shard of the stage before, in shard and batch order, and decides."""
        head = stage.head
        if head is None:
            return
        i = stage.steps[0][0]
        try:
            while True:
                for sh in shards:
                    for batch in ShardInput(self.source, sh, previous.path if previous else None, self.fetch):
                        head.observe(batch)
                head.finalize()
                if not head.another_pass():
                    break
        except StepError:
            raise
        except Exception as exc:
            raise StepError(f"step {i + 1} ({head.name}) failed to decide: {problem(exc)}") from exc

    def _finish(
        self, stages: list[Stage], shards: list[Any], done: list[Any], reports: list[StageReport]
    ) -> RunResult:
        rec, out, last = self.recipe, self.out, stages[-1]
        stats = [StepStats(op.name) for op in self.ops]
        for stage in stages:
            for sh in done:
                for (i, _), s in zip(stage.steps, stage.markers[sh.name]["steps"], strict=True):
                    stats[i].add(s)
        failed = {name: err for st in stages for name, err in st.failed.items()}
        for st in stages:
            failed |= {
                sh.name: str(st.markers[sh.name]["error"]) for sh in done if st.markers[sh.name]["error"]
            }
        stat_columns = [c for op in self.ops for c in op.stat_columns()]
        histograms = {c: Histogram() for c in stat_columns}  # bounded: memory does not grow with rows
        failed_pairs = 0
        sink = RunSink(out, rec.sink, [sh.name for sh in done])
        try:
            for sh in done:
                table = pq.read_table(last.spool(sh))
                keep = sink.add(sh.name, table)
                failed_pairs += failed_loads(table)
                for c, h in histograms.items():
                    if c in table.column_names:
                        v = np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float64)
                        h.add(v[keep], "kept")
                        h.add(v[~keep], "dropped")
            written = sink.close()
        except BaseException:
            sink.abort()
            raise
        write_report(
            out,
            ReportData(
                title=f"vlcurate run: {rec.path}",
                command="run",
                inputs=rec.source.input,
                recipe=rec.path,
                rows=sink.rows,
                kept=sink.kept,
                steps=[asdict(s) for s in stats],
                reasons=sink.reasons,
                histograms={c: h for c, h in histograms.items() if h.count()},
                failed_shards=failed,
                failed_pairs=failed_pairs,
                failure_info={"shards": len(shards)},
                extra={"source": rec.source.model_dump(), "stages": [asdict(r) for r in reports]},
            ),
        )
        return RunResult(
            out,
            sink.rows,
            sink.kept,
            stats,
            sink.subset,
            written.get("instruct"),
            reports,
            failed,
            failed_pairs,
            written.get("shards"),
        )


def timed_step(op: Operator, batch: pa.Table, stats: StepStats, step: int, shard: str) -> pa.Table:
    """`run_step` with the local engine's per-step counts (rows still kept when they reached it)."""
    from vlcurate.ops.base import run_step

    before = keep_mask(batch)
    t = time.perf_counter()
    out = run_step(op, batch, step, shard)
    stats.seconds += time.perf_counter() - t
    after = keep_mask(out)
    stats.saw += int(before.sum())
    stats.kept += int((before & after).sum())
    stats.dropped += int((before & ~after).sum())
    return out


def check_recipe(recipe: Recipe) -> list[str]:
    """What would stop `recipe` before anything runs: an input that cannot be opened or a shard
    that is not there, and each step's resources (models, weights, files, plugins) loaded and
    validated without running (`Operator.check`). One line per problem, naming the step."""
    from vlcurate.ops.fingerprint import file_identity

    problems: list[str] = []
    src = recipe.source
    try:
        source = open_source(src.input, kind=src.kind, **src.options)
        shards = source.shards()
    except (ValueError, OSError) as exc:
        problems.append(f"source: {exc}")
    else:
        missing = [sh.url for sh in shards if sh.kind != "folder" and file_identity(sh.url).get("missing")]
        if missing:
            more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
            problems.append(
                f"source: {len(missing)} of {len(shards)} shards not found: {', '.join(missing[:3])}{more}"
            )
        first = next((sh for sh in shards if sh.url not in missing), None)
        if first is not None:  # the first record: columns that cannot be mapped, a bad container
            try:
                reader = getattr(source, "iter_tables", None) or source.iter_samples
                next(iter(reader(first)), None)
            except (ShardReadError, OSError, ValueError) as exc:
                problems.append(f"source: shard {first.name}: {exc}")
    for i, op in enumerate(recipe.operators()):
        try:
            op.check()
        except Exception as exc:
            problems.append(f"step {i + 1} ({op.name}): {problem(exc)}")
    return problems
