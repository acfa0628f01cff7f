"""The Parquet files of a store: their schemas, how they are written, and point lookups in them.

Manifests and events are sorted by sample id and cut into small row groups (2,048 rows), and each
file carries its *fences* (first and last key of every row group) in its key-value metadata, so
finding one sample reads the fences once per file (cached) and then one small row group, whatever
the file's size: a lineage lookup costs about a millisecond per version at a million samples.
Row-group statistics are the fallback for files written without fences.
"""

from __future__ import annotations

import bisect
import json
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate.base.atomic import write_parquet_atomic
from vlcurate.versions.content import HASH_BYTES
from vlcurate.versions.errors import CorruptVersionError
from vlcurate.versions.model import LineageEvent

ROW_GROUP = 2048  # manifests and events: one lookup reads one group this size (measured: 8192 is 2x slower)
PACK_ROW_GROUP = 2048  # packs: a sample's row group is row // PACK_ROW_GROUP
FENCES = b"vlcurate.fences"

MANIFEST_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("hash", pa.binary(HASH_BYTES)),
        ("pack", pa.string()),
        ("row", pa.int64()),
    ]
)
PACK_SCHEMA = pa.schema([("id", pa.string()), ("hash", pa.binary(HASH_BYTES)), ("sample", pa.string())])
EVENTS_SCHEMA = pa.schema(
    [
        ("sample_id", pa.string()),
        ("seq", pa.int64()),
        ("op", pa.string()),
        ("reason", pa.string()),
        ("dropped", pa.bool_()),
        ("params", pa.string()),
        ("scores", pa.string()),
    ]
)


def write_table(path: Path, table: pa.Table, row_group: int = ROW_GROUP, key: str | None = None) -> None:
    """Atomically, zstd, a fixed row-group size (so a row's group is row // size), and for a table
    sorted by `key` its fences in the metadata and statistics of that column only (small footers)."""
    stats: bool | list[str] = False
    if key is not None:
        col = table.column(key)
        fences = [
            [col[i].as_py(), col[min(i + row_group, table.num_rows) - 1].as_py()]
            for i in range(0, table.num_rows, row_group)
        ]
        table = table.replace_schema_metadata({FENCES: json.dumps(fences, ensure_ascii=False)})
        stats = [key]
    write_parquet_atomic(
        path, table, row_group_size=row_group, compression="zstd", write_statistics=stats, use_dictionary=True
    )


def events_table(events: Iterable[LineageEvent | dict[str, Any]]) -> pa.Table:
    """Events as a table sorted by sample id, keeping the given order within a sample (`seq`).
    Streams: each event is validated and turned into column values, never kept as an object."""

    def js(d: dict[str, Any]) -> str | None:
        return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str) if d else None

    cols: dict[str, list[Any]] = {name: [] for name in EVENTS_SCHEMA.names}
    for seq, raw in enumerate(events):
        e = raw if isinstance(raw, LineageEvent) else LineageEvent.model_validate(raw)
        cols["sample_id"].append(e.sample_id)
        cols["seq"].append(seq)
        cols["op"].append(e.op)
        cols["reason"].append(e.reason)
        cols["dropped"].append(e.dropped)
        cols["params"].append(js(e.params))
        cols["scores"].append(js(e.scores))
    table = pa.table(cols, schema=EVENTS_SCHEMA)
    return table.sort_by([("sample_id", "ascending"), ("seq", "ascending")])


def event_from_row(row: dict[str, Any]) -> LineageEvent:
    return LineageEvent(
        sample_id=row["sample_id"],
        op=row["op"],
        reason=row["reason"],
        dropped=bool(row["dropped"]),
        params=json.loads(row["params"]) if row["params"] else {},
        scores=json.loads(row["scores"]) if row["scores"] else {},
    )


class _Indexed:
    """A Parquet file sorted by `key` and its row groups' min/max, for point lookups."""

    def __init__(self, path: Path, key: str) -> None:
        try:
            # memory-mapped and without pre-buffering: a point read touches one small column chunk
            self.file = pq.ParquetFile(path, memory_map=True, pre_buffer=False)
        except FileNotFoundError:
            raise CorruptVersionError(f"{path} is missing: the version's files were deleted") from None
        except (pa.ArrowInvalid, OSError) as exc:
            raise CorruptVersionError(f"{path} is not a readable Parquet file ({exc})") from None
        meta = self.file.metadata
        col = self.file.schema_arrow.get_field_index(key)
        self.key = key
        self.path = path
        self.mins: list[str] = []
        self.maxs: list[str] = []
        self.groups: list[int] = []
        fences = (self.file.schema_arrow.metadata or {}).get(FENCES)
        if fences is not None:
            try:
                pairs = json.loads(fences)
            except ValueError:
                raise CorruptVersionError(f"{path}: its row-group fences do not parse") from None
            groups = meta.num_row_groups if meta.num_rows else 0  # an empty table has one empty group
            if len(pairs) != groups:
                raise CorruptVersionError(f"{path}: {len(pairs)} fences for {groups} row groups")
            self.groups = list(range(groups))
            self.mins = [a for a, _ in pairs]
            self.maxs = [b for _, b in pairs]
            return
        for g in range(meta.num_row_groups):
            if meta.row_group(g).num_rows == 0:
                continue
            st = meta.row_group(g).column(col).statistics
            if st is None or not st.has_min_max:
                raise CorruptVersionError(f"{path}: row group {g} has no statistics for {key!r}")
            self.groups.append(g)
            self.mins.append(st.min)
            self.maxs.append(st.max)

    def read_group(self, group: int, columns: list[str]) -> pa.Table:
        """One row group; a damaged file is a `CorruptVersionError` naming it, never a raw Arrow error."""
        try:
            return self.file.read_row_group(group, columns=columns)
        except (pa.ArrowException, OSError, IndexError) as exc:
            raise CorruptVersionError(
                f"{self.path} is damaged: row group {group} does not read ({exc})"
            ) from None

    def lookup(self, value: str, columns: list[str]) -> pa.Table:
        """Rows whose key equals `value` (any number, across group boundaries): one row-group read
        per candidate group (measured faster than reading the key first and the rest on a hit)."""
        first = bisect.bisect_left(self.maxs, value)
        wanted = list(dict.fromkeys([self.key, *columns]))
        parts: list[pa.Table] = []
        for k in range(first, len(self.mins)):
            if self.mins[k] > value:
                break
            rg = self.read_group(self.groups[k], wanted)
            parts.append(rg.filter(pc.equal(rg.column(self.key), value)).select(columns))
        if not parts:
            return pa.table({c: pa.array([], self.file.schema_arrow.field(c).type) for c in columns})
        return pa.concat_tables(parts)


class IndexCache:
    """A bounded cache of opened, indexed files (memory stays flat however many versions exist)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str], _Indexed] = OrderedDict()

    def get(self, path: Path, key: str) -> _Indexed:
        k = (str(path), key)
        item = self._items.get(k)
        if item is None:
            item = _Indexed(path, key)
            self._items[k] = item
            if len(self._items) > self.capacity:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(k)
        return item

    def clear(self) -> None:
        self._items.clear()


def read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A whole file, with a clear error when it is gone or damaged."""
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise CorruptVersionError(f"{path} is missing: the version's files were deleted") from None
    except (pa.ArrowInvalid, OSError) as exc:
        raise CorruptVersionError(f"{path} is not a readable Parquet file ({exc})") from None
