"""Samples as canonical bytes, and the hashes a version is addressed by.

A sample is any JSON object with a string `id`. Its canonical text is its JSON with sorted keys and no
spaces, so the same content always hashes the same, whatever order the fields came in; the content
hash (blake2b, 16 bytes) covers the id too, so it identifies one sample's content exactly.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from vlcurate.versions.errors import SampleFormatError

HASH_BYTES = 16


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None (JSON has neither), bytes are refused."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, bytes | bytearray):
        raise SampleFormatError(
            "sample fields must be JSON values; store image bytes as files and refer to them"
        )
    return value


def canonical(sample: Mapping[str, Any]) -> tuple[str, str]:
    """(id, canonical JSON text) of one sample; raises `SampleFormatError` naming what is wrong."""
    sid = sample.get("id")
    if isinstance(sid, int) and not isinstance(sid, bool):
        sid = str(sid)
    if not isinstance(sid, str) or not sid:
        raise SampleFormatError(f"every sample needs a non-empty string 'id'; got {sample.get('id')!r}")
    body = {**sample, "id": sid}
    try:  # the common case, fast; NaN, infinities and odd types take the slow path
        return sid, json.dumps(
            body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        pass
    try:
        text = json.dumps(
            _clean(body), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise SampleFormatError(f"sample {sid!r} is not JSON-serialisable: {exc}") from None
    return sid, text


def content_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=HASH_BYTES).digest()


def iter_dicts(
    samples: Iterable[Mapping[str, Any]] | pa.Table, batch: int = 10_000
) -> Iterator[Mapping[str, Any]]:
    """Samples from dicts or a pyarrow Table (row by row, batch by batch, so a table is not copied whole)."""
    if isinstance(samples, pa.Table):
        for rb in samples.to_batches(max_chunksize=batch):
            yield from rb.to_pylist()
    else:
        yield from samples


def digest_pairs(ids: pa.Array, hashes: pa.Array) -> str:
    """Hash of sorted (id, content hash) pairs: what a version's samples are, independent of files."""
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    h.update(len(ids).to_bytes(8, "little"))
    h.update("\n".join(ids.to_pylist()).encode("utf-8"))
    h.update(b"\x00")
    for buf in hashes.buffers()[1:]:  # fixed-size binary: one data buffer of n * 16 bytes
        if buf is not None:
            h.update(memoryview(buf)[hashes.offset * HASH_BYTES : (hashes.offset + len(hashes)) * HASH_BYTES])
    return h.hexdigest()


def digest_columns(table: pa.Table) -> str:
    """Hash of a table of string/bool/int columns, in row order (the events of a version)."""
    h = hashlib.blake2b(digest_size=HASH_BYTES)
    h.update(table.num_rows.to_bytes(8, "little"))
    for name in table.column_names:
        h.update(name.encode("utf-8") + b"\x01")
        values = ["\x00" if v is None else str(v) for v in table.column(name).to_pylist()]
        h.update("\x1f".join(values).encode("utf-8"))
    return h.hexdigest()


def file_sha256(path: Any, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
