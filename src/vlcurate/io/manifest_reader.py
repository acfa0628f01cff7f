"""Manifests: CSV/TSV, JSONL, a JSON array of records, or COCO captions JSON; one row per image.

A row has an image path or URL, a caption (or a list of captions: one pair per caption, or the
first only) and maybe a uid and key. Column names are detected (open_clip's `filepath`/`title`,
img2dataset's `url`/`caption`, ...) or given (`image_column`, `url_column`, `text_column`); a
`.csv` whose header is tab-separated is read as TSV. Rows are streamed, a row range at a time when
the file was cut into shards. Relative image paths are taken relative to `image_root`, default the
manifest's folder. The uid of a row without one is derived from the reference as written, so it
survives moving the data and does not depend on the image being fetched.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from vlcurate.base.records import Sample, Status, derive_uid
from vlcurate.io.fields import META_KEYS, caption_choices, ext_of, make_sample, pick_column
from vlcurate.io.parquet_reader import REF_COLUMNS, TEXT_COLUMNS, resolve_ref
from vlcurate.io.rows import csv_header, file_buffer, iter_csv_records, json_kind, open_binary, text_format
from vlcurate.io.shards import ShardReadError, ShardRef

MANIFEST_IMAGE_COLUMNS = ("image", "image_path", "image_url", *REF_COLUMNS, "filename", "img")
URL_COLUMNS = ("url", "image_url")
MANIFEST_TEXT_COLUMNS = (*TEXT_COLUMNS, "title", "captions")


@dataclass(frozen=True)
class ManifestColumns:
    """The columns read: `image` (path or URL) first, `url` where the image cell is empty."""

    image: str | None
    url: str | None
    text: str


def resolve_manifest_columns(
    names: list[str],
    where: str,
    image_column: str | None = None,
    url_column: str | None = None,
    text_column: str | None = None,
) -> ManifestColumns:
    """Map a manifest's columns to roles, or raise ShardReadError listing found and expected ones."""
    if image_column is not None or url_column is None:
        image = pick_column(names, image_column, MANIFEST_IMAGE_COLUMNS)
    else:
        image = pick_column(names, None, [c for c in MANIFEST_IMAGE_COLUMNS if c not in URL_COLUMNS])
    url = pick_column(names, url_column, URL_COLUMNS)
    if url == image:
        url = None
    text = pick_column(names, text_column, MANIFEST_TEXT_COLUMNS)
    want: list[str] = []
    if image_column is not None and image is None:
        want.append(f"the image column {image_column!r}")
    if url_column is not None and url is None:
        want.append(f"the URL column {url_column!r}")
    if not want and image is None and url is None:
        known = " or ".join(map(repr, dict.fromkeys(MANIFEST_IMAGE_COLUMNS)))  # each name once
        want.append(f"an image path/URL column ({known})")
    if text is None:
        choices: Sequence[str] = [text_column] if text_column else MANIFEST_TEXT_COLUMNS
        want.append("a caption column (" + " or ".join(map(repr, choices)) + ")")
    if want:
        raise ShardReadError(f"{where}: expected {' and '.join(want)}; columns found: {names}")
    assert text is not None
    return ManifestColumns(image, url, text)


@dataclass(frozen=True)
class RecordContext:
    """What every row of one file shares: the file, names, options."""

    shard: ShardRef
    stem: str
    base: str  # relative image paths are resolved against this file's folder
    captions: str = "all"
    uid_column: str | None = None
    key_column: str | None = None


def _cell(value: Any) -> str | None:
    return str(value).strip() if value not in (None, "") and not isinstance(value, (list, dict)) else None


def record_samples(
    rec: dict[Any, Any], n: int, cols: ManifestColumns, ctx: RecordContext
) -> Iterator[Sample]:
    """The samples of one row: one, or one per caption of a caption list."""
    raw_ref = (_cell(rec.get(cols.image)) if cols.image else None) or (
        _cell(rec.get(cols.url)) if cols.url else None
    )
    key = rec.get(ctx.key_column or "key")
    key = str(key) if key not in (None, "") else f"{ctx.stem}_{n:08d}"
    meta: dict[str, Any] = {k: rec[k] for k in META_KEYS if rec.get(k) not in (None, "")}
    meta.update({"shard": ctx.shard.url, "row": n})
    choices = caption_choices(rec.get(cols.text), ctx.captions)
    missing = f"empty {cols.image or cols.url!r} in this row"
    for index, text in choices:
        where = f"{ctx.shard.url}#row={n}" + ("" if index is None else f"&caption={index}")
        yield make_sample(
            key=key,
            text=text,
            image_ref=resolve_ref(raw_ref, ctx.base) if raw_ref else None,
            uid_ref=raw_ref,
            image_ext=(ext_of(raw_ref) or None) if raw_ref else None,
            raw_uid=rec.get(ctx.uid_column or "uid"),
            meta=meta,
            fallback_ref=f"{ctx.shard.url}#{n}",
            missing_image_detail=missing,
            source=where,
            caption_index=index,
        )


def read_error_sample(ctx: RecordContext, n: int, error: str) -> Sample:
    return Sample(
        uid=derive_uid(f"{ctx.shard.url}#{n}", None),
        key=f"{ctx.stem}_{n:08d}",
        text=None,
        meta={"shard": ctx.shard.url, "row": n},
        status=Status.READ_ERROR,
        error=error,
        source=f"{ctx.shard.url}#row={n}",
    )


def _jsonl_rows(shard: ShardRef) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, decoded line or None, error) for the lines of one JSONL shard."""
    rows = shard.rows
    with open_binary(shard.url) as fh:
        n = 0
        if rows is not None and rows.start_byte >= 0:
            fh.seek(rows.start_byte)
            n = rows.first
        for raw in fh:
            if rows is not None and n >= rows.stop:
                return
            line = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
            if line.strip():
                try:
                    yield n, json.loads(line), None
                except ValueError as exc:
                    yield n, None, f"line {n + 1}: invalid JSON ({exc})"
            n += 1


def _csv_rows(shard: ShardRef) -> Iterator[tuple[int, Any, str | None]]:
    rows = shard.rows
    with open_binary(shard.url) as fh:
        header, delimiter, offset = csv_header(fh, text_format(shard.url))
        if not header:
            return
        n = 0
        if rows is not None and rows.start_byte >= 0:
            offset, n = rows.start_byte, rows.first
        for rec, _after in iter_csv_records(fh, header, delimiter, offset):
            if rows is not None and n >= rows.stop:
                return
            yield n, rec, None
            n += 1


def _json_array_rows(shard: ShardRef) -> Iterator[tuple[int, Any, str | None]]:
    from vlcurate.io.jsonscan import JsonScanError, array_elements

    buf = file_buffer(shard.url)
    rows = shard.rows
    n = 0
    try:
        if rows is not None and rows.start_byte >= 0:
            n = rows.first
            elements = array_elements(buf, rows.start_byte, rows.end_byte)
        else:
            elements = array_elements(buf)
        for start, end in elements:
            try:
                yield n, json.loads(bytes(buf[start:end])), None
            except ValueError as exc:
                yield n, None, f"element {n}: invalid JSON ({exc})"
            n += 1
    except JsonScanError as exc:
        raise ShardReadError(f"{shard.url}: not a valid JSON array after {n} elements: {exc}") from None


def iter_manifest_samples(
    shard: ShardRef,
    *,
    image_column: str | None = None,
    url_column: str | None = None,
    text_column: str | None = None,
    uid_column: str | None = None,
    key_column: str | None = None,
    captions: str = "all",
    image_root: str | None = None,
) -> Iterator[Sample]:
    """Samples of one manifest shard; a row that cannot be parsed becomes a READ_ERROR sample."""
    url = shard.url
    stem = shard.rows.stem if shard.rows is not None else shard.name
    base = image_root.rstrip("/") + "/_" if image_root else url  # resolve_ref takes a file's parent
    ctx = RecordContext(shard, stem, base, captions, uid_column, key_column)
    fmt = text_format(url)
    try:
        if fmt == "json" and json_kind(file_buffer(url)) == "object":
            from vlcurate.io.json_reader import iter_coco_samples

            yield from iter_coco_samples(shard, stem, captions=captions, image_root=image_root)
            return
        readers = {"jsonl": _jsonl_rows, "json": _json_array_rows}
        rows = readers.get(fmt, _csv_rows)(shard)
        cols: ManifestColumns | None = None
        for n, rec, error in rows:
            if error is None and not isinstance(rec, dict):
                where = f"line {n + 1}" if fmt == "jsonl" else f"element {n}"
                error = f"{where}: expected a JSON object, got {type(rec).__name__}"
            if error is not None:
                yield read_error_sample(ctx, n, error)
                continue
            if cols is None:
                names = [k for k in rec if k is not None]
                cols = resolve_manifest_columns(names, url, image_column, url_column, text_column)
            yield from record_samples(rec, n, cols, ctx)
    except (csv.Error, UnicodeError, OSError) as exc:
        raise ShardReadError(f"{url}: unreadable manifest ({exc})") from exc
