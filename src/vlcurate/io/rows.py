"""Cutting one big file into row-range shards, and reading the records of one such range.

A CSV/TSV or JSONL manifest is scanned once (bytes, line by line; the CSV through the `csv` module
so that quoted newlines and stray quotes count as the reader counts them) to find where every
`rows_per_shard`-th record starts; a JSON array is scanned for its elements without decoding them;
a Parquet file's row count comes from its footer. Each range becomes a `ShardRef` named
`STEM-rFIRST-STOP`, so names are stable across runs, change when the cut does, and a resume after
a crash re-reads at most the range that was being read. A file that fits in one shard keeps its
plain stem as the name and is read whole, as before.
"""

from __future__ import annotations

import csv
import json
import mmap
import os
from collections.abc import Iterator
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.core import url_to_fs

from vlcurate.io.jsonscan import JsonScanError, array_elements
from vlcurate.io.paths import has_protocol
from vlcurate.io.shards import RowRange, ShardReadError, ShardRef, range_name

CSV_FIELD_LIMIT = 1 << 24  # a caption cell may be long; the csv module's default is 128 KiB


def text_format(url: str) -> str:
    """'csv', 'tsv', 'jsonl' or 'json' from a manifest's file name."""
    low = url.lower().split("?", 1)[0]
    if low.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if low.endswith(".json"):
        return "json"
    if low.endswith(".tsv"):
        return "tsv"
    return "csv"


def csv_delimiter(fmt: str, header_line: str) -> str:
    """Tab for .tsv; for .csv, tab when the header has more tabs than commas (open_clip's
    `filepath<TAB>title` files are often named .csv), else comma."""
    if fmt == "tsv":
        return "\t"
    return "\t" if header_line.count("\t") > header_line.count(",") else ","


def _decoded_lines(fh: IO[bytes], pos: list[int]) -> Iterator[str]:
    """Lines of a binary file as text, advancing `pos[0]` past each line's bytes."""
    for raw in fh:
        pos[0] += len(raw)
        yield raw.decode("utf-8", errors="replace")


def csv_header(fh: IO[bytes], fmt: str) -> tuple[list[str], str, int]:
    """(column names, delimiter, byte offset after the header) of a CSV/TSV at its start."""
    fh.seek(0)
    pos = [0]
    lines = _decoded_lines(fh, pos)
    first_line = ""
    for line in lines:
        if line.strip("\r\n"):
            first_line = line.lstrip("\ufeff")  # a UTF-8 byte order mark
            break
    else:
        return [], ",", pos[0]
    delimiter = csv_delimiter(fmt, first_line)
    csv.field_size_limit(CSV_FIELD_LIMIT)

    def chain() -> Iterator[str]:
        yield first_line
        yield from lines

    reader = csv.reader(chain(), delimiter=delimiter)
    header = next(reader)
    return header, delimiter, pos[0]


def iter_csv_records(
    fh: IO[bytes], header: list[str], delimiter: str, start_byte: int
) -> Iterator[tuple[dict[Any, Any], int]]:
    """(row dict as `csv.DictReader` gives it, byte offset where the next record starts) from
    `start_byte` (the first byte of a record); blank lines are skipped, as DictReader does."""
    fh.seek(start_byte)
    pos = [start_byte]
    reader = csv.reader(_decoded_lines(fh, pos), delimiter=delimiter)
    width = len(header)
    for row in reader:
        if not row:
            continue
        rec: dict[Any, Any] = dict(zip(header, row, strict=False))
        if len(row) > width:
            rec[None] = row[width:]
        for name in header[len(row) :]:
            rec[name] = None
        yield rec, pos[0]


def open_binary(url: str) -> IO[bytes]:
    try:
        fs, path = url_to_fs(url)
        fh: IO[bytes] = fs.open(path, "rb")
        return fh
    except FileNotFoundError as exc:
        raise ShardReadError(f"shard not found: {url}") from exc


def file_buffer(url: str, what: str = "shard") -> Any:
    """The file's bytes: memory-mapped when local (nothing loaded), else read through fsspec;
    `what` names the file in the not-found error."""
    if not has_protocol(url) or url.startswith("file://"):
        path = url.removeprefix("file://")
        try:
            fh = open(path, "rb")  # noqa: SIM115 - the map keeps its own reference
        except FileNotFoundError:
            raise ShardReadError(f"{what} not found: {url}") from None
        with fh:
            if os.fstat(fh.fileno()).st_size == 0:
                return b""
            return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
    fs, path = url_to_fs(url)
    try:
        data: bytes = fs.cat_file(path)
    except FileNotFoundError:
        raise ShardReadError(f"{what} not found: {url}") from None
    return data


def json_kind(buf: Any) -> str:
    """'array' for a JSON array, 'object' for a JSON object (COCO captions), by the first byte."""
    head = bytes(buf[:4096]).lstrip(b"\xef\xbb\xbf \t\r\n")
    return "array" if head[:1] == b"[" else "object"


# --- planning --------------------------------------------------------------------------------------


def _cut(
    url: str, stem: str, kind: str, total: int, per: int, starts: list[int] | None, end: int
) -> list[ShardRef]:
    """ShardRefs of rows [0, total) in ranges of `per`; `starts[k]` is range k's first byte."""
    if total <= per:
        return [ShardRef(url, stem, kind)]
    refs = []
    for k, first in enumerate(range(0, total, per)):
        stop = min(first + per, total)
        b0 = starts[k] if starts is not None else -1
        b1 = (starts[k + 1] if k + 1 < len(starts) else end) if starts is not None else -1
        refs.append(ShardRef(url, range_name(stem, first, stop), kind, RowRange(stem, first, stop, b0, b1)))
    return refs


def _plan_csv(url: str, stem: str, fmt: str, per: int) -> list[ShardRef]:
    with open_binary(url) as fh:
        _header, delimiter, offset = csv_header(fh, fmt)
        fh.seek(offset)
        pos = [offset]
        starts: list[int] = []
        total = 0
        for row in csv.reader(_decoded_lines(fh, pos), delimiter=delimiter):
            if row:  # a blank line is not a row (as DictReader reads it)
                if total % per == 0:
                    starts.append(offset)
                total += 1
            offset = pos[0]
    return _cut(url, stem, "manifest", total, per, starts, offset)


def _plan_jsonl(url: str, stem: str, per: int) -> list[ShardRef]:
    starts: list[int] = []
    offset = total = 0
    with open_binary(url) as fh:
        for line in fh:  # row numbers are line numbers (blank lines are skipped when read)
            if total % per == 0:
                starts.append(offset)
            total += 1
            offset += len(line)
    return _cut(url, stem, "manifest", total, per, starts, offset)


def _plan_json(url: str, stem: str, per: int) -> list[ShardRef]:
    buf = file_buffer(url)
    if json_kind(buf) == "object":
        from vlcurate.io.json_reader import load_json_object  # a COCO captions file

        return _cut(url, stem, "manifest", len(load_json_object(url).images), per, None, -1)
    starts: list[int] = []
    total = 0
    try:
        for start, _end in array_elements(buf):
            if total % per == 0:
                starts.append(start)
            total += 1
    except JsonScanError as exc:
        raise ShardReadError(f"{url}: not a valid JSON array: {exc}") from None
    return _cut(url, stem, "manifest", total, per, starts, len(buf))


def _plan_parquet(url: str, stem: str, per: int) -> list[ShardRef]:
    with open_binary(url) as fh:
        total = pq.ParquetFile(fh).metadata.num_rows
    return _cut(url, stem, "parquet", total, per, None, -1)


def plan_file(url: str, stem: str, kind: str, rows_per_shard: int) -> list[ShardRef]:
    """The shards of one parquet or manifest file. A file that cannot be planned (missing,
    unreadable) is one whole-file shard, whose reading then reports the problem."""
    try:
        if kind == "parquet":
            return _plan_parquet(url, stem, rows_per_shard)
        fmt = text_format(url)
        if fmt == "jsonl":
            return _plan_jsonl(url, stem, rows_per_shard)
        if fmt == "json":
            return _plan_json(url, stem, rows_per_shard)
        return _plan_csv(url, stem, fmt, rows_per_shard)
    except (ShardReadError, OSError, ValueError, csv.Error, pa.ArrowException, json.JSONDecodeError):
        return [ShardRef(url, stem, kind)]
