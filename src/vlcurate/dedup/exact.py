"""Exact deduplication: rows with the same content hash form one group, of which one row is kept.

Identity is a digest of the bytes (blake2b, 128 bits by default: collisions are out of reach for any
pool size), or hash values computed elsewhere (DataComp's `sha256` column, an int64 hash column).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vlcurate.dedup.results import (
    DedupResult,
    UidsLike,
    check_priority,
    check_uids,
    processing_order,
    uid_order,
)

Buffer = bytes | bytearray | memoryview


def content_hashes(contents: Iterable[Buffer], digest_size: int = 16) -> NDArray[np.uint8]:
    """blake2b digests of byte strings as a (n, digest_size) uint8 array, one row per item."""
    if not 1 <= digest_size <= 64:
        raise ValueError(f"digest_size must be between 1 and 64 bytes, got {digest_size}")
    digests = bytearray()
    n = 0
    for i, item in enumerate(contents):
        if not isinstance(item, bytes | bytearray | memoryview):
            raise ValueError(f"contents[{i}] must be bytes, got {type(item).__name__}")
        digests += hashlib.blake2b(item, digest_size=digest_size).digest()
        n += 1
    return np.frombuffer(bytes(digests), dtype=np.uint8).reshape(n, digest_size)


def _as_keys(keys: ArrayLike) -> NDArray[Any]:
    """Hash keys as a 1-D array that numpy can sort and compare (digest rows become fixed bytes)."""
    arr = np.asarray(keys)
    if arr.ndim == 2:
        if arr.dtype != np.uint8:
            raise ValueError(f"2-D hash keys must be uint8 digests (one row per item), got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr)
        return arr.view(np.dtype((np.void, arr.shape[1]))).reshape(arr.shape[0])
    if arr.ndim != 1:
        raise ValueError(f"hash keys must be 1-D (or 2-D uint8 digests), got shape {arr.shape}")
    if isinstance(keys, list | tuple) and keys and all(isinstance(v, bytes) for v in keys):
        return np.array([v.hex() for v in keys])  # an "S" array would drop trailing NUL bytes
    if arr.dtype.kind == "O":
        values = arr.tolist()
        if all(isinstance(v, str) for v in values):
            return arr.astype(str)
        if all(isinstance(v, bytes) for v in values):
            return np.array([v.hex() for v in values])
        raise ValueError("hash keys must all be str, all bytes or all integers")
    if arr.dtype.kind not in "iuUSV":
        raise ValueError(f"hash keys must be integers, strings or bytes, got dtype {arr.dtype}")
    return arr


def exact_dedup(keys: ArrayLike, uids: UidsLike = None, priority: ArrayLike | None = None) -> DedupResult:
    """Keep one row per distinct hash key: the highest `priority` (ties: smallest uid).

    `keys`: one hash per row (ints, hex strings, a list of bytes) or a (n, k) uint8 digest array such
    as `content_hashes` returns (not a numpy "S" array: numpy drops its trailing NUL bytes).
    Whole-dataset, deterministic, independent of row order.
    """
    k = _as_keys(keys)
    n = int(k.shape[0])
    if n == 0:
        raise ValueError("exact_dedup needs at least one row; got empty input")
    uid_arr = check_uids(uids, n)
    prio = check_priority(priority, n)
    order = processing_order(uid_order(uid_arr), prio)
    _, inverse = np.unique(k, return_inverse=True)
    inverse = inverse.reshape(n)
    # np.unique's return_index gives first occurrences: in processing order, the row to keep.
    _, first = np.unique(inverse[order], return_index=True)
    rep_of_group = order[first]
    representative = rep_of_group[inverse].astype(np.int64)
    keep = representative == np.arange(n)
    score = np.where(keep, np.nan, 0.0)
    return DedupResult("exact", uid_arr, keep, representative, score)


def exact_dedup_bytes(
    contents: Iterable[Buffer],
    uids: UidsLike = None,
    priority: ArrayLike | None = None,
    digest_size: int = 16,
) -> DedupResult:
    """`exact_dedup` over the blake2b digests of raw contents (e.g. encoded image bytes)."""
    return exact_dedup(content_hashes(contents, digest_size), uids, priority)
