"""The operator contract.

A batch is a `pyarrow.Table` with at least `uid`; readers add `text` and `image` (encoded bytes).
An operator adds columns and never removes rows: a filter sets `keep` to False with a `reason`, and
the sink decides what to write, so every dropped uid keeps the reason it was dropped for. The first
reason wins: a pair dropped by an earlier step keeps that step's reason, and `dropped_by` names
that step (`source` for a pair whose image or record could not be loaded). A source may also carry
`reasons`, the list of every check a row fails (a score table's decisions list them all): then each
filter appends its failures to it, on rows earlier steps dropped too.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict

KEEP, REASON, DROPPED_BY, REASONS = "keep", "reason", "dropped_by", "reasons"
SOURCE = "source"  # `dropped_by` of pairs the source could not load or that it rejects


class OpParams(BaseModel):
    """Parameters of an operator: validated, unknown keys refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Operator(ABC):
    """One step of a recipe.

    `kind` says how an engine runs it: `map` and `filter` see one batch at a time; `global` first
    sees every batch (`observe`), then decides (`finalize`), then marks (`process`) - what a global
    top fraction or a dataset-wide deduplication needs.
    """

    name: ClassVar[str]
    kind: ClassVar[Literal["map", "filter", "global"]] = "map"
    Params: ClassVar[type[OpParams]] = OpParams
    requires: ClassVar[tuple[str, ...]] = ("uid",)
    uses_model: ClassVar[bool] = False  # engines give model operators their own workers / GPUs

    def __init__(self, params: OpParams | None = None) -> None:
        self.params = params if params is not None else self.Params()
        # A model step computes only rows still kept, unless a later step reads its columns on rows
        # earlier steps dropped (a top fraction `among: all`): the recipe sets this, see `reads_dropped`.
        self.all_rows = False

    def required_columns(self) -> tuple[str, ...]:
        """Columns needed beyond `requires` that depend on the parameters (e.g. the column to rank)."""
        return ()

    def provides(self) -> tuple[str, ...]:
        """Columns this operator adds (filters also add `keep` and `reason`)."""
        return (KEEP, REASON) if self.kind in ("filter", "global") else ()

    def stat_columns(self) -> tuple[str, ...]:
        """Numeric columns whose distribution the report plots (kept against dropped)."""
        return ()

    def reads_dropped(self) -> tuple[str, ...]:
        """Columns this step reads on rows that earlier steps dropped (a ranking over every pair)."""
        return ()

    def fingerprint(self) -> dict[str, Any]:
        """What this step's output depends on besides its input: its name, parameters and the models
        or files it loads (`resources`). A re-run reuses a stage only when this is unchanged."""
        return {
            "op": self.name,
            "params": self.params.model_dump(mode="json"),
            "all_rows": self.all_rows,
            **self.resources(),
        }

    def resources(self) -> dict[str, Any]:
        """Identities of the models and files this step loads (`ops.fingerprint`), for `fingerprint`."""
        return {}

    def setup(self) -> None:  # noqa: B027 - optional hook
        """Load models or tables once per worker, before the first batch."""

    def check(self) -> None:
        """Load and validate what the step needs without running it (`vlcurate run --check`);
        raises with what is missing. By default: `setup`."""
        self.setup()

    def observe(self, batch: pa.Table) -> None:  # noqa: B027 - optional hook
        """Global operators: see a batch before deciding (first pass)."""

    def finalize(self) -> None:  # noqa: B027 - optional hook
        """Global operators: decide after every batch was observed."""

    def another_pass(self) -> bool:
        """Global operators: whether the engine must `observe` every batch once more, then call
        `finalize` again, before `process` (an exact cut in bounded memory takes several passes)."""
        return False

    @abstractmethod
    def process(self, batch: pa.Table) -> pa.Table:
        """Return the batch with this operator's columns added (same rows, same order)."""

    @classmethod
    def doc(cls) -> str:
        return (cls.__doc__ or "").strip().split("\n\n")[0].replace("\n", " ")


def keep_mask(batch: pa.Table) -> np.ndarray:
    """Rows still kept by earlier steps (all of them before any filter ran)."""
    if KEEP not in batch.column_names:
        return np.ones(batch.num_rows, dtype=bool)
    return np.asarray(batch.column(KEEP).to_numpy(zero_copy_only=False), dtype=bool)


def live_rows(op: Operator, batch: pa.Table) -> np.ndarray:
    """Rows a model step computes: those still kept, or every row when a later step needs them all."""
    return np.ones(batch.num_rows, dtype=bool) if op.all_rows else keep_mask(batch)


def not_computed(batch: pa.Table, rows: np.ndarray) -> list[str | None]:
    """`not scored: dropped by STEP` for each row in `rows` (None elsewhere), for a status column."""
    by = batch.column(DROPPED_BY).to_pylist() if DROPPED_BY in batch.column_names else [None] * len(rows)
    return [
        f"not scored: dropped by {b or 'an earlier step'}" if r else None
        for r, b in zip(rows, by, strict=True)
    ]


def numeric(batch: pa.Table, column: str) -> np.ndarray:
    """A column as float64, nulls as NaN."""
    return np.asarray(batch.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)


def apply_bounds(
    values: np.ndarray,
    lo: float | None,
    hi: float | None,
    name: str,
    keep: np.ndarray,
    reasons: list[str | None],
) -> None:
    """AND a [lo, hi] check into `keep` in place, writing `name<lo` / `name>hi` for rows it drops."""
    if lo is not None:
        low = keep & (values < lo)
        for i in np.flatnonzero(low):
            reasons[i] = f"{name}<{lo:g}"
        keep &= ~low
    if hi is not None:
        high = keep & (values > hi)
        for i in np.flatnonzero(high):
            reasons[i] = f"{name}>{hi:g}"
        keep &= ~high


def from_source(batch: pa.Table) -> np.ndarray:
    """Rows the source itself dropped (not loadable, or rejected as it read them)."""
    if DROPPED_BY not in batch.column_names:
        return np.zeros(batch.num_rows, dtype=bool)
    return np.asarray(pc.fill_null(pc.equal(batch.column(DROPPED_BY), SOURCE), False), dtype=bool)


def mark(
    batch: pa.Table,
    keep: np.ndarray,
    reasons: list[str | None] | str,
    *,
    listed: np.ndarray | None = None,
) -> pa.Table:
    """AND `keep` into the batch's keep column; a newly dropped row gets its reason, earlier reasons stay.

    Where the batch carries `reasons` (every failing check), each row failing here is appended to it,
    dropped earlier or not, unless `listed` (a mask) leaves it out: a row the check could not judge."""
    n = batch.num_rows
    keep = np.asarray(keep, dtype=bool)
    if keep.shape != (n,):
        raise ValueError(f"keep mask has shape {keep.shape}, batch has {n} rows")
    why = pa.scalar(reasons, pa.string()) if isinstance(reasons, str) else pa.array(reasons, pa.string())
    old_keep = keep_mask(batch)
    old_reason = batch.column(REASON) if REASON in batch.column_names else pa.nulls(n, pa.string())
    newly = pa.array(old_keep & ~keep)
    new_reason = pc.if_else(
        newly, why, pc.if_else(pa.array(old_keep), pa.scalar(None, pa.string()), old_reason)
    )
    out = set_column(batch, KEEP, pa.array(old_keep & keep))
    out = set_column(out, REASON, new_reason)
    if REASONS in out.column_names:
        fails = ~keep if listed is None else ~keep & listed
        labels = why if isinstance(why, pa.Array) else pa.array([reasons] * n, pa.string())
        out = append_reasons(out, pc.if_else(pa.array(fails), labels, pa.scalar(None, pa.string())))
    return out


def append_reasons(batch: pa.Table, labels: pa.Array) -> pa.Table:
    """Append to each row's `reasons` list its label(s): a string (null: none) or a list per row."""
    old = batch.column(REASONS).combine_chunks()
    if isinstance(old, pa.ChunkedArray):
        old = old.chunk(0) if old.num_chunks else pa.array([], pa.list_(pa.string()))
    if pa.types.is_list(labels.type):
        add_vals = pc.list_flatten(labels)
        add_n = np.asarray(pc.fill_null(pc.list_value_length(labels), 0), dtype=np.int64)
    else:
        valid = labels.is_valid()
        add_vals = labels.filter(valid)
        add_n = np.asarray(valid, dtype=np.int64)
    if not len(add_vals):
        return batch
    old_vals = pc.list_flatten(old)
    old_n = np.asarray(pc.fill_null(pc.list_value_length(old), 0), dtype=np.int64)
    n = len(old_n)
    new_off = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(old_n + add_n, out=new_off[1:])
    take = np.empty(int(new_off[-1]), dtype=np.int64)
    rows_old = np.repeat(np.arange(n), old_n)
    old_start = np.concatenate([[0], np.cumsum(old_n)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    pos_old = new_off[:-1][rows_old] + (np.arange(len(rows_old)) - old_start[rows_old])
    take[pos_old] = np.arange(len(rows_old))
    rows_add = np.repeat(np.arange(n), add_n)
    add_start = np.concatenate([[0], np.cumsum(add_n)[:-1]]) if n else np.zeros(0, dtype=np.int64)
    pos_add = new_off[:-1][rows_add] + old_n[rows_add] + (np.arange(len(rows_add)) - add_start[rows_add])
    take[pos_add] = len(old_vals) + np.arange(len(rows_add))
    values = pa.concat_arrays([old_vals.cast(pa.string()), add_vals.cast(pa.string())]).take(pa.array(take))
    lists = pa.ListArray.from_arrays(pa.array(new_off.astype(np.int32)), values)
    return set_column(batch, REASONS, lists)


def set_column(batch: pa.Table, name: str, values: pa.Array | np.ndarray | list[object]) -> pa.Table:
    """Add or replace one column."""
    col = values if isinstance(values, pa.Array) else pa.array(values)
    if name in batch.column_names:
        return batch.set_column(batch.column_names.index(name), name, col)
    return batch.append_column(name, col)


class StepError(RuntimeError):
    """A step of a recipe failed; the message names the step and the shard."""


def problem(exc: BaseException) -> str:
    """`Type: message` on one line."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def setup_step(op: Operator, step: int) -> None:
    """`op.setup()`; a failure (missing weights, a file that is not there) is a one-line `StepError`."""
    try:
        op.setup()
    except StepError:
        raise
    except Exception as exc:
        raise StepError(f"step {step} ({op.name}) failed to set up: {problem(exc)}") from exc


def run_step(op: Operator, batch: pa.Table, step: int, shard: str) -> pa.Table:
    """`op.process(batch)` as both engines run it: a failure becomes a `StepError` that names step
    `step` (1-based) and the shard, and a step that did not write a column it declares (in
    `provides()`, which recipe validation trusts) is stopped here, not by a later step's KeyError.
    Rows the step dropped get its name in `dropped_by`."""
    before = keep_mask(batch)
    try:
        out = op.process(batch)
    except StepError:
        raise
    except Exception as exc:
        raise StepError(f"step {step} ({op.name}) failed on shard {shard}: {problem(exc)}") from exc
    if out.num_rows:
        missing = [c for c in op.provides() if c not in out.column_names]
        if missing:
            raise StepError(
                f"step {step} ({op.name}) did not write the column(s) it declares: {', '.join(missing)}"
            )
    if KEEP in out.column_names and out.num_rows == batch.num_rows:
        dropped = before & ~keep_mask(out)
        if dropped.any() or DROPPED_BY not in out.column_names:
            old = (
                out.column(DROPPED_BY).to_pylist()
                if DROPPED_BY in out.column_names
                else [None] * out.num_rows
            )
            by = [op.name if d else b for d, b in zip(dropped, old, strict=True)]
            out = set_column(out, DROPPED_BY, pa.array(by, pa.string()))
    return out
