"""CSV/TSV/JSONL manifests: one row per pair with an image path or URL, a caption and maybe a uid.

Rows are streamed; relative image paths are taken relative to the manifest's folder. The uid of a
row without one is derived from the reference as written, so it survives moving the data and does
not depend on the image being fetched.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec

from vlcurate.io.fields import META_KEYS, ext_of, make_sample, pick_column
from vlcurate.io.parquet_reader import REF_COLUMNS, TEXT_COLUMNS, resolve_ref
from vlcurate.io.shards import ShardReadError, ShardRef
from vlcurate.records import Sample, Status, derive_uid

MANIFEST_IMAGE_COLUMNS = ("image", "image_path", "image_url", *REF_COLUMNS, "filename", "img")


def _columns(
    names: list[str], url: str, image_column: str | None, text_column: str | None
) -> tuple[str, str]:
    image = pick_column(names, image_column, MANIFEST_IMAGE_COLUMNS)
    text = pick_column(names, text_column, TEXT_COLUMNS)
    if image is None or text is None:
        want: list[str] = []
        if image is None:
            choices: Sequence[str] = [image_column] if image_column else MANIFEST_IMAGE_COLUMNS
            want.append("an image path/URL column (" + " or ".join(map(repr, choices)) + ")")
        if text is None:
            choices = [text_column] if text_column else TEXT_COLUMNS
            want.append("a caption column (" + " or ".join(map(repr, choices)) + ")")
        raise ShardReadError(f"{url}: expected {' and '.join(want)}; columns found: {names}")
    return image, text


def _rows(fh: io.TextIOBase, url: str) -> Iterator[tuple[int, dict[str, Any] | None, str | None]]:
    """(row number, row dict or None, error) for each row of a CSV/TSV or JSONL stream."""
    low = url.lower()
    if low.endswith((".jsonl", ".ndjson")):
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as exc:
                yield n, None, f"line {n + 1}: invalid JSON ({exc})"
                continue
            if isinstance(doc, dict):
                yield n, doc, None
            else:
                yield n, None, f"line {n + 1}: expected a JSON object, got {type(doc).__name__}"
    else:
        reader = csv.DictReader(fh, delimiter="\t" if low.endswith(".tsv") else ",")
        for n, rec in enumerate(reader):
            yield n, dict(rec), None


def iter_manifest_samples(
    shard: ShardRef,
    *,
    image_column: str | None = None,
    text_column: str | None = None,
    uid_column: str | None = None,
    key_column: str | None = None,
) -> Iterator[Sample]:
    """Samples of one manifest file; a row that cannot be parsed becomes a READ_ERROR sample."""
    url = shard.url
    try:
        fh = fsspec.open(url, "rt", encoding="utf-8", errors="replace", newline="").open()
    except FileNotFoundError as exc:
        raise ShardReadError(f"shard not found: {url}") from exc
    cols: tuple[str, str] | None = None
    try:
        for n, rec, error in _rows(fh, url):
            key_default = f"{shard.name}_{n:08d}"
            if rec is None:
                yield Sample(
                    uid=derive_uid(f"{url}#{n}", None),
                    key=key_default,
                    text=None,
                    meta={"shard": url, "row": n},
                    status=Status.READ_ERROR,
                    error=error,
                )
                continue
            if cols is None:
                cols = _columns(list(rec), url, image_column, text_column)
            yield _row_sample(rec, n, cols, shard, uid_column, key_column, key_default)
    except (csv.Error, UnicodeError, OSError) as exc:
        raise ShardReadError(f"{url}: unreadable manifest ({exc})") from exc
    finally:
        fh.close()


def _row_sample(
    rec: dict[str, Any],
    n: int,
    cols: tuple[str, str],
    shard: ShardRef,
    uid_column: str | None,
    key_column: str | None,
    key_default: str,
) -> Sample:
    image_col, text_col = cols
    raw_ref = rec.get(image_col)
    raw_ref = str(raw_ref).strip() if raw_ref not in (None, "") else None
    text = rec.get(text_col)
    key = rec.get(key_column or "key")
    meta: dict[str, Any] = {k: rec[k] for k in META_KEYS if rec.get(k) not in (None, "")}
    meta.update({"shard": shard.url, "row": n})
    return make_sample(
        key=str(key) if key not in (None, "") else key_default,
        text=None if text is None else str(text),
        image_ref=resolve_ref(raw_ref, shard.url) if raw_ref else None,
        uid_ref=raw_ref,
        image_ext=(ext_of(raw_ref) or None) if raw_ref else None,
        raw_uid=rec.get(uid_column or "uid"),
        meta=meta,
        fallback_ref=f"{shard.url}#{n}",
        missing_image_detail=f"empty {image_col!r} in this row",
    )
