"""Near deduplication: 64-bit perceptual hashes (imagehash's pHash) within a Hamming distance.

Finding the pairs: multi-index hashing with faiss's `IndexBinaryMultiHash`. The 64 bits are cut into
m disjoint chunks of b = 64 // m bits, each a hash table; a query probes every bucket within f bit
flips of its own chunk values. If m * (f + 1) > d, two hashes within distance d must agree on some
chunk up to f flips (pigeonhole), so the search is exact; the plan (m, f) is the one with the fewest
expected probes and candidates for the pool size (1M hashes, d=4: m=3, f=1, 21-bit chunks).

Grouping: identical hashes are collapsed first (every copy is within 0 of its best row), then a greedy
keep-first pass in priority order (`greedy_keep`): a hash is dropped only when it is within d of a hash
already kept. Union-find would instead chain A~B~C and drop C for A even when C is far from A; the
greedy pass keeps every reason honest ("within d of the kept uid") and leaves no two kept hashes within d.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vlcurate.base.images import phash
from vlcurate.dedup.results import (
    DedupResult,
    UidsLike,
    check_priority,
    check_uids,
    greedy_keep,
    processing_order,
    uid_order,
)

if TYPE_CHECKING:
    from PIL import Image

MAX_DISTANCE_LIMIT = 16  # beyond this pHash matches unrelated photos and the search is no longer sparse


def phashes(images: Iterable[Image.Image]) -> NDArray[np.uint64]:
    """`base.images.phash` of each image, as the uint64 array that `near_dedup` takes."""
    return np.array([phash(im) for im in images], dtype=np.uint64)


def multihash_plan(n: int, max_distance: int) -> tuple[int, int]:
    """(chunks m, flips f) with m * (f + 1) > d and the lowest expected probes + candidates per query."""
    best: tuple[float, int, int] | None = None
    for m in range(2, 65):  # m >= 2 keeps chunks at <= 32 bits
        b = 64 // m
        f = -(-(max_distance + 1) // m) - 1
        if f > b:
            continue
        probes = sum(math.comb(b, i) for i in range(f + 1))
        cost = m * probes * (1.0 + n / 2.0**b)
        if best is None or cost < best[0]:
            best = (cost, m, f)
    assert best is not None
    return best[1], best[2]


def near_pairs(
    hashes: NDArray[np.uint64],
    max_distance: int,
    plan: tuple[int, int] | None = None,
    block_size: int = 1 << 16,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """All pairs (i < j) of the given hashes within `max_distance`, with their distances.

    Queries go in blocks so that the result lists stay bounded; every pair is found once from its
    smaller index. `plan` overrides `multihash_plan` (tests use it to exercise bit flips).
    """
    import faiss

    n = int(hashes.shape[0])
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    m, f = plan if plan is not None else multihash_plan(n, max_distance)
    if m * (f + 1) <= max_distance:
        raise ValueError(f"plan {m} chunks x {f} flips cannot guarantee distance {max_distance}")
    codes = np.ascontiguousarray(hashes.astype(np.uint64)).view(np.uint8).reshape(n, 8)
    index = faiss.IndexBinaryMultiHash(64, m, 64 // m)
    index.nflip = f
    index.add(codes)
    out_i, out_j, out_d = [], [], []
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        lims, dist, ids = index.range_search(codes[start:stop], max_distance + 1)  # radius is strict
        counts = np.diff(lims).astype(np.int64)
        qi = np.repeat(np.arange(start, stop, dtype=np.int64), counts)
        ids = ids.astype(np.int64)
        sel = (ids > qi) & (dist <= max_distance)
        out_i.append(qi[sel])
        out_j.append(ids[sel])
        out_d.append(dist[sel].astype(np.int64))
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_d)


def _check_hashes(hashes: ArrayLike) -> NDArray[np.uint64]:
    arr = np.asarray(hashes)
    if arr.ndim != 1:
        raise ValueError(f"hashes must be a 1-D array of 64-bit perceptual hashes, got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError("near_dedup needs at least one hash; got empty input")
    if arr.dtype not in (np.dtype(np.uint64), np.dtype(np.int64)):
        raise ValueError(
            f"hashes must be uint64 (or int64 holding the same 64 bits), got dtype {arr.dtype}; "
            "use phashes() or np.array(values, dtype=np.uint64)"
        )
    return arr.view(np.uint64)


def near_dedup(
    hashes: ArrayLike,
    uids: UidsLike = None,
    priority: ArrayLike | None = None,
    max_distance: int = 4,
) -> DedupResult:
    """Drop rows whose 64-bit hash is within `max_distance` bits of a kept row's hash.

    Rows claim in order of `priority` (highest first; ties by smallest uid), over the whole dataset.
    """
    h = _check_hashes(hashes)
    if isinstance(max_distance, bool) or not isinstance(max_distance, int | np.integer):
        raise ValueError(f"max_distance must be an integer, got {max_distance!r}")
    if not 0 <= max_distance <= MAX_DISTANCE_LIMIT:
        raise ValueError(f"max_distance must be between 0 and {MAX_DISTANCE_LIMIT}, got {max_distance}")
    n = int(h.shape[0])
    uid_arr = check_uids(uids, n)
    prio = check_priority(priority, n)
    order = processing_order(uid_order(uid_arr), prio)

    # Collapse identical hashes: group g's leader is its first row in processing order.
    uniq, inverse = np.unique(h, return_inverse=True)
    inverse = inverse.reshape(n)
    _, leader_pos = np.unique(inverse[order], return_index=True)
    group_order = np.argsort(leader_pos, kind="stable")  # groups in the order their leaders claim
    g = int(uniq.shape[0])
    gpos = np.empty(g, dtype=np.int64)
    gpos[group_order] = np.arange(g, dtype=np.int64)
    leader_row = order[leader_pos[group_order]]  # by group position

    if max_distance > 0:
        src, dst, dist = near_pairs(uniq[group_order], max_distance)
        lo, hi = np.minimum(src, dst), np.maximum(src, dst)
        keep_g, rep_g, dist_g = greedy_keep(g, lo, hi, dist.astype(np.float64))
    else:
        keep_g = np.ones(g, dtype=bool)
        rep_g = np.arange(g, dtype=np.int64)
        dist_g = np.full(g, np.nan)

    row_g = gpos[inverse]
    is_leader = leader_row[row_g] == np.arange(n)
    group_kept = keep_g[row_g]
    representative = np.where(group_kept, leader_row[row_g], leader_row[rep_g[row_g]])
    score = np.where(group_kept, 0.0, dist_g[row_g])
    keep = is_leader & group_kept
    score[keep] = np.nan
    return DedupResult("near", uid_arr, keep, representative.astype(np.int64), score)
