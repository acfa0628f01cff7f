"""Find the score tables, tell which form they are, and read them batch by batch.

Three forms are accepted: a `vlcurate score` run directory (`scores/*.parquet` + `summary.json`),
one or more of our score tables (a file, a directory of them, or a glob), and DataComp's own pool
metadata Parquet (`uid`, `text`, `original_width`, `original_height`, `clip_*_similarity_score`),
so DataComp's CLIP-score baselines can be reproduced without scoring anything.
Reading is streamed per row group, so memory does not grow with the table.
"""

from __future__ import annotations

import glob
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate.filtering.errors import FilterInputError

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


@dataclass(frozen=True)
class InputSet:
    """The resolved inputs: files in a fixed order, their form, and the column mapping."""

    files: tuple[Path, ...]
    form: str  # "scores" (our score tables) or "datacomp" (DataComp pool metadata)
    columns: ColumnMap
    total_rows: int
    summary_json: Path | None = None


@dataclass
class RawBatch:
    """One batch as read: uids validated and lower-cased, scores widened to float64 (NaN for null)."""

    shard: str
    uid: pa.Array
    score: np.ndarray
    score_null: np.ndarray
    status: pa.Array | None
    text: pa.Array | None
    width: np.ndarray | None  # float64, NaN for null
    height: np.ndarray | None

    def __len__(self) -> int:
        return len(self.uid)


def _expand_one(item: str | Path) -> tuple[list[Path], Path | None]:
    """Files named by one SCORES argument, and a run's summary.json when there is one."""
    text = str(item)
    if any(c in _GLOB_CHARS for c in text) and not Path(text).exists():
        matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise FilterInputError(f"no files match {text!r}")
        return files, None
    path = Path(text)
    if not path.exists():
        raise FilterInputError(f"SCORES path not found: {path}")
    if path.is_file():
        return [path], None
    scores_dir = path / "scores"
    if scores_dir.is_dir():
        files = sorted(scores_dir.glob("*.parquet"))
        summary = path / "summary.json"
        if not files:
            raise FilterInputError(f"{scores_dir} holds no .parquet score tables")
        return files, summary if summary.exists() else None
    files = sorted(path.glob("*.parquet"))
    if not files:
        raise FilterInputError(f"{path} holds no .parquet files (nor a scores/ folder of a score run)")
    summary = path / "summary.json"
    return files, summary if summary.exists() else None


def _schema(path: Path) -> tuple[pa.Schema, int]:
    try:
        meta = pq.read_metadata(path)
        return meta.schema.to_arrow_schema(), meta.num_rows
    except (OSError, pa.ArrowException) as exc:
        raise FilterInputError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return msg[0] if msg else type(exc).__name__


def resolve_inputs(scores: str | Path | Sequence[str | Path], score_column: str | None = None) -> InputSet:
    """Expand SCORES into files, detect their form and check the needed columns exist."""
    items: list[str | Path] = [scores] if isinstance(scores, (str, Path)) else list(scores)
    if not items:
        raise FilterInputError("no SCORES given")
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
            raise FilterInputError(f"{f}: no `uid` column; columns found: {', '.join(schema.names)}")
        is_dc = "status" not in names and any(c in names for c in DATACOMP_SCORE_COLUMNS)
        forms.append("datacomp" if is_dc else "scores")
        schemas.append(schema)
        total += n
    if len(set(forms)) > 1:
        dc = unique[forms.index("datacomp")]
        ours = unique[forms.index("scores")]
        raise FilterInputError(
            f"inputs mix DataComp metadata ({dc}) and score tables ({ours}); filter them apart"
        )
    form = forms[0]
    col = score_column or ("clip_l14_similarity_score" if form == "datacomp" else "score")
    for f, schema in zip(unique, schemas, strict=True):
        if col not in schema.names:
            raise FilterInputError(
                f"{f}: no score column {col!r} (choose with --score-column); "
                f"columns found: {', '.join(schema.names)}"
            )
        typ = schema.field(col).type
        if not (pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_decimal(typ)):
            raise FilterInputError(f"{f}: score column {col!r} has type {typ}, not a number")

    def common(name: str) -> str | None:
        return name if all(name in s.names for s in schemas) else None

    if form == "datacomp":
        cmap = ColumnMap(col, None, common("text"), common("original_width"), common("original_height"))
    else:
        cmap = ColumnMap(col, common("status"), common("text"), common("width"), common("height"))
    return InputSet(tuple(unique), form, cmap, total, summary)


def _validated_uids(path: Path, arr: pa.Array) -> pa.Array:
    """Lower-cased uids, or an error naming the first that is not 32 hex digits."""
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        raise FilterInputError(f"{path}: uid column has type {arr.type}; uids must be 32-hex strings")
    low = pc.utf8_lower(arr).cast(pa.string())
    ok = pc.fill_null(pc.match_substring_regex(low, _UID_RE), False)
    if not pc.all(ok).as_py():
        bad_idx = int(np.flatnonzero(~ok.to_numpy(zero_copy_only=False))[0])
        raise FilterInputError(
            f"{path}: uid {arr[bad_idx].as_py()!r} is not 32 hex digits (DataComp's 128-bit uid)"
        )
    return low


def _float_col(arr: pa.Array) -> np.ndarray:
    """Column as float64 with NaN for nulls (widening is exact for float32 and int32)."""
    return np.asarray(pc.fill_null(arr.cast(pa.float64()), float("nan")).to_numpy(zero_copy_only=False))


def iter_batches(
    inputs: InputSet, batch_size: int, *, need_text: bool = False, need_size: bool = False
) -> Iterator[RawBatch]:
    """Stream every input file in order, one row-group-sized batch at a time."""
    cm = inputs.columns
    for path in inputs.files:
        cols = ["uid", cm.score]
        if cm.status:
            cols.append(cm.status)
        if need_text and cm.text:
            cols.append(cm.text)
        if need_size and cm.width and cm.height:
            cols += [cm.width, cm.height]
        try:
            pf = pq.ParquetFile(path)
            batches = pf.iter_batches(batch_size=batch_size, columns=cols)
            for rb in batches:
                yield _to_raw(path, rb, cm, need_text, need_size)
        except FilterInputError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise FilterInputError(f"{path}: not a readable Parquet file ({_one_line(exc)})") from exc


def _to_raw(path: Path, rb: pa.RecordBatch, cm: ColumnMap, need_text: bool, need_size: bool) -> RawBatch:
    names = rb.schema.names
    score_arr = rb.column(names.index(cm.score))
    score = _float_col(score_arr)
    width = height = None
    if need_size and cm.width and cm.height:
        width = _float_col(rb.column(names.index(cm.width)))
        height = _float_col(rb.column(names.index(cm.height)))
    return RawBatch(
        shard=path.stem,
        uid=_validated_uids(path, rb.column(names.index("uid"))),
        score=score,
        score_null=np.asarray(score_arr.is_null().to_numpy(zero_copy_only=False)),
        status=rb.column(names.index(cm.status)).cast(pa.string()) if cm.status else None,
        text=rb.column(names.index(cm.text)).cast(pa.string()) if need_text and cm.text else None,
        width=width,
        height=height,
    )
