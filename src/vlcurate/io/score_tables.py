"""Score tables as a recipe source: find them, tell which form they are, and read them as Arrow batches.

`vlcurate filter` is a recipe over this source (`kind: scores`). Three forms are accepted: a
`vlcurate score` run directory (`scores/*.parquet` + `summary.json`), one or more of our score
tables (a file, a directory of them, or a glob), and DataComp's own pool metadata Parquet (`uid`,
`text`, `original_width`, `original_height`, `clip_*_similarity_score`), so DataComp's CLIP-score
baselines can be reproduced without scoring anything.
Reading is streamed per row group, so memory does not grow with the table, and a big file is cut
into row-range shards. Each batch carries the score column (float64), `status`, `text`, `width`,
`height` where the input has them, the shard, and the recipe engine's `keep`/`reason`/`dropped_by`:
a row whose status is not `ok` is dropped by the source as `status:VALUE`, and a row with status ok
but a null, NaN or out-of-range score as `invalid_score`. `reasons` lists every failing check of a
row (later steps append theirs), for the decisions' `reasons` column.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate.io.paths import shard_names
from vlcurate.io.shards import RowRange, ShardRef, range_name

# Score rows are small: a shard of this many rows is a few MB of Arrow, which the engine holds at once.
DEFAULT_SCORE_ROWS_PER_SHARD = 262_144


class ScoreTableError(ValueError):
    """Bad score-table input: the message is one line, meant for the user, never a traceback."""


DATACOMP_SCORE_COLUMNS = ("clip_l14_similarity_score", "clip_b32_similarity_score")
_GLOB_CHARS = set("*?[")
_UID_RE = "^[0-9a-f]{32}$"


@dataclass(frozen=True)
class ColumnMap:
    """Which column of the input holds each field we use (None when the input lacks it)."""

    score: str
    status: str | None
    text: str | None
    width: str | None
    height: str | None
    key: str | None = None


@dataclass(frozen=True)
class InputSet:
    """The resolved inputs: files in a fixed order, their form, and the column mapping."""

    files: tuple[Path, ...]
    form: str  # "scores" (our score tables) or "datacomp" (DataComp pool metadata)
    columns: ColumnMap
    total_rows: int
    summary_json: Path | None = None


def _expand_one(item: str | Path) -> tuple[list[Path], Path | None]:
    """Files named by one SCORES argument, and a run's summary.json when there is one."""
    text = str(item)
    if any(c in _GLOB_CHARS for c in text) and not Path(text).exists():
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise ScoreTableError(f"no files match {text!r}")
        return files, None
    path = Path(text)
    if not path.exists():
        raise ScoreTableError(f"SCORES path not found: {path}")
    if path.is_file():
        return [path], None
    scores_dir = path / "scores"
    if scores_dir.is_dir():
        files = sorted(scores_dir.glob("*.parquet"))
        summary = path / "summary.json"
        if not files:
            raise ScoreTableError(f"{scores_dir} holds no .parquet score tables")
        return files, summary if summary.exists() else None
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise ScoreTableError(f"{path} holds no .parquet files (nor a scores/ folder of a score run)")
    summary = path / "summary.json"
    return files, summary if summary.exists() else None


def _schema(path: Path) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema(), meta.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise ScoreTableError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def resolve_inputs(scores: str | Path | Sequence[str | Path], score_column: str | None = None) -> InputSet:
    """Expand SCORES into files, detect their form and check the needed columns exist."""
    items: list[str | Path] = [scores] if isinstance(scores, (str, Path)) else list(scores)
    if not items:
        raise ScoreTableError("no SCORES given")
    files: list[Path] = []
    summary: Path | None = None
    for item in items:
        found, summ = _expand_one(item)
        files.extend(found)
        summary = summary or summ
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)

    forms: list[str] = []
    schemas: list[pa.Schema] = []
    total = 0
    for f in unique:
        schema, n = _schema(f)
        names = set(schema.names)
        if "uid" not in names:
            raise ScoreTableError(f"{f}: no `uid` column; columns found: {', '.join(schema.names)}")
        is_dc = "status" not in names and any(c in names for c in DATACOMP_SCORE_COLUMNS)
        forms.append("datacomp" if is_dc else "scores")
        schemas.append(schema)
        total += n
    if len(set(forms)) > 1:
        dc = unique[forms.index("datacomp")]
        ours = unique[forms.index("scores")]
        raise ScoreTableError(
            f"inputs mix DataComp metadata ({dc}) and score tables ({ours}); filter them apart"
        )
    form = forms[0]
    col = score_column or ("clip_l14_similarity_score" if form == "datacomp" else "score")
    for f, schema in zip(unique, schemas, strict=True):
        if col not in schema.names:
            raise ScoreTableError(
                f"{f}: no score column {col!r} (choose with --score-column); "
                f"columns found: {', '.join(schema.names)}"
            )
        typ = schema.field(col).type
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_decimal(typ)):
            raise ScoreTableError(f"{f}: score column {col!r} has type {typ}, not a number")

    def common(name: str) -> str | None:
        return name if all(name in s.names for s in schemas) else None

    if form == "datacomp":
        cmap = ColumnMap(col, None, common("text"), common("original_width"), common("original_height"))
    else:
        cmap = ColumnMap(
            col, common("status"), common("text"), common("width"), common("height"), common("key")
        )
    return InputSet(tuple(unique), form, cmap, total, summary)


def _validated_uids(path: Path, arr: pa.Array) -> pa.Array:
    """Lower-cased uids, or an error naming the first that is not 32 hex digits."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise ScoreTableError(f"{path}: uid column has type {arr.type}; uids must be 32-hex strings")
    low = pc.utf8_lower(arr).cast(pa.string())
    ok = pc.fill_null(pc.match_substring_regex(low, _UID_RE), False)
    if not pc.all(ok).as_py():
        bad_idx = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
        raise ScoreTableError(
            f"{path}: uid {arr[bad_idx].as_py()!r} is not 32 hex digits (DataComp's 128-bit uid)"
        )
    return low


def _float_col(arr: pa.Array) -> np.ndarray:
    """Column as float64 with NaN for nulls (widening is exact for float32 and int32)."""
    return np.asarray(pc.fill_null(arr.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False))


SCORE_RANGE = (-1.0, 1.0)  # a cosine similarity: anything else is a corrupt score
STATUS_PREFIX, INVALID_SCORE = "status:", "invalid_score"


@dataclass
class ScoreTableSource:
    """The recipe source over score tables (`open_source(..., kind="scores")`): one shard per file,
    or per `rows_per_shard` rows of a big file (whole row groups are read, then sliced)."""

    inputs: InputSet
    refs: list[ShardRef]

    @property
    def score_column(self) -> str:
        return self.inputs.columns.score

    def shards(self) -> list[ShardRef]:
        return list(self.refs)

    def iter_samples(self, shard: ShardRef) -> Iterator[Any]:
        raise ValueError("score tables hold scores, not image-caption samples: read them with iter_tables")

    def iter_tables(self, shard: ShardRef, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """The rows of one shard as Arrow tables, validated, with the engine's bookkeeping columns."""
        path = Path(shard.url)
        cm = self.inputs.columns
        cols = ["uid", cm.score] + [c for c in (cm.status, cm.text, cm.width, cm.height) if c]
        if cm.key:
            cols.append(cm.key)
        stem = shard.rows.stem if shard.rows is not None else path.stem
        first, stop = (shard.rows.first, shard.rows.stop) if shard.rows is not None else (0, None)
        try:
            pf = pq.ParquetFile(path)
            start, groups = _groups(pf, first, stop)
            row = start
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=groups, columns=cols):
                lo = max(first - row, 0)
                hi = rb.num_rows if stop is None else min(rb.num_rows, stop - row)
                row += rb.num_rows
                if hi > lo:
                    yield _table(path, rb.slice(lo, hi - lo), cm, stem)
        except ScoreTableError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise ScoreTableError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from exc


def _groups(pf: pq.ParquetFile, first: int, stop: int | None) -> tuple[int, list[int]]:
    """(first row of the first group read, the row groups holding rows [first, stop))."""
    meta = pf.metadata
    groups: list[int] = []
    begin = start = 0
    for g in range(meta.num_row_groups):
        end = start + meta.row_group(g).num_rows
        if end > first and (stop is None or start < stop):
            if not groups:
                begin = start
            groups.append(g)
        start = end
    return begin, groups


def _table(path: Path, rb: pa.RecordBatch, cm: ColumnMap, stem: str) -> pa.Table:
    names = rb.schema.names
    n = rb.num_rows
    uid = _validated_uids(path, rb.column(names.index("uid")))
    raw = rb.column(names.index(cm.score))
    score = _float_col(raw)
    lo, hi = SCORE_RANGE
    with np.errstate(invalid="ignore"):
        in_range = (score >= lo) & (score <= hi)  # False for NaN
    columns: dict[str, pa.Array] = {"uid": uid}
    if cm.key:
        columns["key"] = rb.column(names.index(cm.key)).cast(pa.string())
    columns[cm.score] = pa.array(score, pa.float64(), mask=np.asarray(raw.is_null()))
    reason = pa.nulls(n, pa.string())
    ok = in_range
    if cm.status:
        status = rb.column(names.index(cm.status)).cast(pa.string())
        columns["status"] = status
        bad = ~np.asarray(pc.fill_null(pc.equal(status, "ok"), False).to_numpy(zero_copy_only=False))
        label = pc.binary_join_element_wise(STATUS_PREFIX, pc.fill_null(status, "null"), "")
        reason = pc.if_else(pa.array(bad), label, reason)
        ok = ok & ~bad
        invalid = ~bad & ~in_range
    else:
        invalid = ~in_range
    reason = pc.if_else(pa.array(invalid), pa.scalar(INVALID_SCORE), reason)
    if cm.text:
        columns["text"] = rb.column(names.index(cm.text)).cast(pa.string())
    if cm.width and cm.height:
        columns["width"] = pa.array(_float_col(rb.column(names.index(cm.width))))
        columns["height"] = pa.array(_float_col(rb.column(names.index(cm.height))))
    columns["shard"] = pa.DictionaryArray.from_arrays(
        pa.array(np.zeros(n, dtype=np.int32)), pa.array([stem])
    ).cast(pa.string())
    columns["keep"] = pa.array(ok)
    columns["reason"] = reason
    columns["dropped_by"] = pc.if_else(pa.array(ok), pa.scalar(None, pa.string()), pa.scalar("source"))
    has = np.asarray(reason.is_valid())
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(has, out=offsets[1:])
    columns["reasons"] = pa.ListArray.from_arrays(pa.array(offsets), reason.filter(pa.array(has)))
    return pa.table(columns)


def open_score_tables(
    spec: str | Path | Sequence[str | Path],
    *,
    score_column: str | None = None,
    rows_per_shard: int | None = None,
) -> ScoreTableSource:
    """The score tables named by `spec` (see `resolve_inputs`) as a source, big files cut into
    row ranges of `rows_per_shard` (default `DEFAULT_SCORE_ROWS_PER_SHARD`)."""
    inputs = resolve_inputs(spec, score_column)
    per = int(rows_per_shard or DEFAULT_SCORE_ROWS_PER_SHARD)
    if per <= 0:
        raise ScoreTableError(f"rows_per_shard must be positive, got {per}")
    urls = [str(f) for f in inputs.files]
    refs = [
        ref for url, name in zip(urls, shard_names(urls), strict=True) for ref in _cut_file(url, name, per)
    ]
    return ScoreTableSource(inputs, refs)


def _cut_file(url: str, name: str, per: int) -> list[ShardRef]:
    rows = pq.read_metadata(url).num_rows
    if rows <= per:
        return [ShardRef(url, name, "scores")]
    return [
        ShardRef(
            url, range_name(name, a, min(a + per, rows)), "scores", RowRange(name, a, min(a + per, rows))
        )
        for a in range(0, rows, per)
    ]
