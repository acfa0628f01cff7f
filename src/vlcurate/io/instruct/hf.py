"""HF datasets Parquet: an `images` column of `Image` features, `messages`, and `meta` as JSON.

`datasets` stores images as a struct {bytes, path} and knows a column is an `Image` only from the
`huggingface` key of the Parquet schema metadata, so the writer puts it there (in the long-standing
`Sequence` / list-of-dict spelling that both old and new `datasets` versions read). Readers also
accept a single `image` column and `conversations` in LLaVA spelling, as published HF copies of
LLaVA data have them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.io.instruct.formats import SampleError, parse_record
from vlcurate.io.instruct.model import InstructSample

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("images", pa.list_(IMAGE_STRUCT)),
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("meta", pa.string()),
    ]
)
_VALUE = {"dtype": "string", "_type": "Value"}
HF_FEATURES: dict[str, Any] = {
    "id": _VALUE,
    "images": {"feature": {"_type": "Image"}, "_type": "Sequence"},
    "messages": [{"role": _VALUE, "content": _VALUE}],
    "meta": _VALUE,
}
HF_SCHEMA = SCHEMA.with_metadata({"huggingface": json.dumps({"info": {"features": HF_FEATURES}})})


def hf_row(sample: InstructSample, images: Sequence[tuple[bytes | None, str | None]]) -> dict[str, Any]:
    """One Parquet row: images as {bytes, path} (bytes embedded, path the file name)."""
    return {
        "id": sample.id,
        "images": [{"bytes": b, "path": p} for b, p in images],
        "messages": [m.model_dump() for m in sample.messages],
        "meta": json.dumps(sample.meta, ensure_ascii=False),
    }


class HFWriter:
    """Streams rows into one Parquet file with the `datasets` feature metadata."""

    def __init__(self, path: Path, row_group_rows: int = 1000) -> None:
        self.path = path
        self._writer = pq.ParquetWriter(str(path), HF_SCHEMA)
        self._rows: list[dict[str, Any]] = []
        self._group = row_group_rows

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= self._group:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._writer.write_table(pa.Table.from_pylist(self._rows, schema=HF_SCHEMA))
            self._rows = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def _record(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as a record `parse_record` reads: the JSON `meta` column is unpacked (its nulls
    kept); other null cells are dropped (a column only some rows use)."""
    rec = {k: v for k, v in row.items() if v is not None and k != "meta"}
    raw_meta = row.get("meta")
    extra = None
    if isinstance(raw_meta, str):
        try:
            extra = json.loads(raw_meta)
        except ValueError:
            extra = None
    if isinstance(extra, dict):
        return {**extra, **rec}
    if raw_meta is not None:
        rec["meta"] = raw_meta
    return rec


def iter_hf_rows(
    path: str, row_groups: list[int] | None = None, first_index: int = 0
) -> Iterator[tuple[int, InstructSample | SampleError]]:
    """(index, sample or error) for the rows of `row_groups` (all by default) of one Parquet file."""
    pf = pq.ParquetFile(path)
    groups = row_groups if row_groups is not None else list(range(pf.num_row_groups))
    index = first_index
    for g in groups:
        for row in pf.read_row_group(g).to_pylist():
            try:
                yield index, parse_record(_record(row), source=path, index=index)
            except SampleError as exc:
                yield index, exc
            index += 1
