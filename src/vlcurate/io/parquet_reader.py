"""Streaming Parquet reader: image bytes or an image path/URL per row, plus caption and uid.

Reads one record batch at a time (`ParquetFile.iter_batches`) and only the columns it needs, so a
multi-GB file costs one batch of memory. Column names are auto-detected or given explicitly. A
shard that is a row range of a big file reads only the row groups that hold its rows. A caption
cell holding a list gives one pair per caption (or the first only, `captions="first"`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.base.images import sniff_image_ext
from vlcurate.base.records import Sample
from vlcurate.io.fields import (
    IMAGE_EXTS,
    META_KEYS,
    caption_choices,
    ext_of,
    make_sample,
    pick_column,
)
from vlcurate.io.paths import has_protocol
from vlcurate.io.shards import ShardReadError, ShardRef

IMAGE_COLUMNS = ("image", "jpg", "image_bytes", "img", "jpeg", "png", "webp")
REF_COLUMNS = ("url", "image_url", "path", "image_path", "file_name", "filepath")
TEXT_COLUMNS = ("text", "caption", "txt")
PARQUET_TEXT_COLUMNS = (*TEXT_COLUMNS, "title", "captions")


@dataclass(frozen=True)
class ParquetColumns:
    """Which column holds what; `image` holds bytes (or an HF `{bytes, path}` struct), `ref` a path/URL."""

    image: str | None
    ref: str | None
    text: str
    uid: str | None
    key: str | None
    meta: tuple[str, ...]


def resolve_columns(
    schema: pa.Schema,
    url: str,
    *,
    image_column: str | None = None,
    url_column: str | None = None,
    text_column: str | None = None,
    uid_column: str | None = None,
    key_column: str | None = None,
) -> ParquetColumns:
    """Map a file's columns to roles, or raise ShardReadError listing found and expected columns."""
    names = list(schema.names)
    image = pick_column(names, image_column, IMAGE_COLUMNS)
    ref = pick_column(names, url_column, REF_COLUMNS)
    if image is not None and image_column is None:
        t = schema.field(image).type
        if pa.types.is_string(t) or pa.types.is_large_string(t):  # `image` holding paths
            ref, image = ref or image, None
    text = pick_column(names, text_column, PARQUET_TEXT_COLUMNS)
    problems = []
    if image is None and ref is None:
        want = [c for c in (image_column, url_column) if c] or [*IMAGE_COLUMNS, *REF_COLUMNS]
        problems.append("an image column (" + " or ".join(map(repr, want)) + ")")
    if text is None:
        want = [text_column] if text_column else list(PARQUET_TEXT_COLUMNS)
        problems.append("a caption column (" + " or ".join(map(repr, want)) + ")")
    for label, explicit in (("uid", uid_column), ("key", key_column)):
        if explicit is not None and explicit not in names:
            problems.append(f"the {label} column {explicit!r}")
    if problems:
        raise ShardReadError(f"{url}: expected {' and '.join(problems)}; columns found: {names}")
    assert text is not None
    uid = pick_column(names, uid_column, ("uid",))
    key = pick_column(names, key_column, ("key",))
    used = {image, ref, text, uid, key}
    meta = tuple(n for n in names if n in META_KEYS and n not in used)
    return ParquetColumns(image, ref, text, uid, key, meta)


def _parent(url: str) -> str:
    return url.rsplit("/", 1)[0] if "/" in url else "."


def resolve_ref(ref: str, base_url: str) -> str:
    """Make a relative path in a table or manifest relative to that file's folder."""
    if has_protocol(ref) or ref.startswith("/"):
        return ref
    return f"{_parent(base_url)}/{ref}"


def _image_cell(value: Any) -> tuple[bytes | None, str | None]:
    """Bytes and/or path from an image cell: raw bytes, or an HF datasets `{bytes, path}` struct."""
    if isinstance(value, dict):
        data = value.get("bytes")
        return (bytes(data) if data else None), (value.get("path") or None)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return (bytes(value) if len(value) else None), None
    return None, None


def iter_parquet_samples(
    shard: ShardRef,
    *,
    image_column: str | None = None,
    url_column: str | None = None,
    text_column: str | None = None,
    uid_column: str | None = None,
    key_column: str | None = None,
    batch_size: int = 512,
    captions: str = "all",
    image_root: str | None = None,
) -> Iterator[Sample]:
    """Samples of one parquet file (or row range of one), one record batch at a time.

    Raises ShardReadError for a missing or unreadable file, wrong columns, or a corrupt row group
    (after yielding the rows read before it).
    """
    url = shard.url
    ctx = _Context(
        shard,
        shard.rows.stem if shard.rows is not None else shard.name,
        image_root.rstrip("/") + "/_" if image_root else url,
        captions,
    )
    try:
        fh = fsspec.open(url, "rb").open()
    except FileNotFoundError as exc:
        raise ShardReadError(f"shard not found: {url}") from exc
    row = 0
    try:
        try:
            pf = pq.ParquetFile(fh)
        except (pa.ArrowException, OSError) as exc:
            raise ShardReadError(f"{url}: not a readable parquet file ({exc})") from exc
        cols = resolve_columns(
            pf.schema_arrow,
            url,
            image_column=image_column,
            url_column=url_column,
            text_column=text_column,
            uid_column=uid_column,
            key_column=key_column,
        )
        wanted = [c for c in (cols.image, cols.ref, cols.text, cols.uid, cols.key, *cols.meta) if c]
        first, stop, groups = _row_groups(pf, shard)
        row = sum(pf.metadata.row_group(g).num_rows for g in range(groups[0])) if groups else first
        batches = pf.iter_batches(
            batch_size=batch_size, columns=list(dict.fromkeys(wanted)), row_groups=groups
        )
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                break
            except (pa.ArrowException, OSError) as exc:
                raise ShardReadError(f"{url}: corrupt parquet data after {row} rows ({exc})") from exc
            if row + batch.num_rows <= first:
                row += batch.num_rows
                continue
            data = {name: batch.column(name).to_pylist() for name in batch.schema.names}
            for i in range(batch.num_rows):
                if first <= row < stop:
                    yield from _row_samples(data, i, row, cols, ctx)
                row += 1
            if row >= stop:
                break
    finally:
        fh.close()


@dataclass(frozen=True)
class _Context:
    shard: ShardRef
    stem: str
    base: str
    captions: str


def _row_groups(pf: pq.ParquetFile, shard: ShardRef) -> tuple[int, int, list[int]]:
    """(first row, stop row, row groups holding them) of a shard; all groups for a whole file."""
    meta = pf.metadata
    if shard.rows is None:
        return 0, meta.num_rows, list(range(meta.num_row_groups))
    first, stop = shard.rows.first, shard.rows.stop
    groups, start = [], 0
    for g in range(meta.num_row_groups):
        end = start + meta.row_group(g).num_rows
        if end > first and start < stop:
            groups.append(g)
        start = end
    return first, stop, groups


def _image_ext(image: bytes | None, column: str | None, ref: str | None) -> str | None:
    """The image format: from a `jpg`/`png`/`webp` column name, the bytes, or the path's suffix."""
    if image is not None:
        if column and column.lower() in IMAGE_EXTS:
            return column.lower()
        return sniff_image_ext(image)
    return (ext_of(ref) or None) if ref else None


def _row_samples(
    data: dict[str, list[Any]], i: int, row: int, cols: ParquetColumns, ctx: _Context
) -> Iterator[Sample]:
    url = ctx.shard.url
    image, embedded_path = _image_cell(data[cols.image][i]) if cols.image else (None, None)
    raw_ref = data[cols.ref][i] if cols.ref else embedded_path
    raw_ref = str(raw_ref) if raw_ref not in (None, "") else None
    key = data[cols.key][i] if cols.key else None
    meta: dict[str, Any] = {k: data[k][i] for k in cols.meta if data[k][i] is not None}
    meta["shard"] = url
    meta["row"] = row
    if raw_ref is not None and has_protocol(raw_ref):
        meta.setdefault("url", raw_ref)
    for index, text in caption_choices(data[cols.text][i], ctx.captions):
        yield make_sample(
            key=str(key) if key not in (None, "") else f"{ctx.stem}_{row:08d}",
            text=text,
            image=image,
            image_ref=None if image is not None or raw_ref is None else resolve_ref(raw_ref, ctx.base),
            uid_ref=raw_ref,
            image_ext=_image_ext(image, cols.image, raw_ref),
            raw_uid=data[cols.uid][i] if cols.uid else None,
            meta=meta,
            fallback_ref=f"{url}#{row}",
            missing_image_detail="no image bytes or path in this row",
            source=f"{url}#row={row}" + ("" if index is None else f"&caption={index}"),
            caption_index=index,
        )
