"""What every dedup function returns, and the pieces they share: input checks, the processing order
(priority, then uid) and the greedy keep-first pass over candidate pairs.

Why one result type: the exact, near and semantic operators all mark rows (never delete), each with a
reason and the uid of the row that was kept in its place, so that a report can show both sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Method = Literal["exact", "near", "semantic"]
UidsLike = Sequence[str] | Sequence[int] | NDArray[Any] | None


@dataclass(frozen=True, eq=False)
class DedupResult:
    """Per-row decisions of one dedup pass, aligned with the input rows.

    `representative[i]` is the row index of the kept row that stands for row i (i itself when kept);
    `score[i]` is what linked a dropped row to it (0 for exact, the Hamming distance for near, the
    cosine similarity for semantic) and NaN for kept rows; `cluster` is the k-means cluster (semantic).
    """

    method: Method
    uids: NDArray[Any]
    keep: NDArray[np.bool_]
    representative: NDArray[np.int64]
    score: NDArray[np.float64]
    cluster: NDArray[np.int64] | None = None

    def __len__(self) -> int:
        return int(self.keep.shape[0])

    @property
    def n_kept(self) -> int:
        return int(np.count_nonzero(self.keep))

    @property
    def n_dropped(self) -> int:
        return len(self) - self.n_kept

    @property
    def dropped(self) -> NDArray[np.int64]:
        """Row indices of the dropped rows, ascending."""
        return np.flatnonzero(~self.keep).astype(np.int64)

    @property
    def representative_uids(self) -> NDArray[Any]:
        """The kept uid standing for each row (the row's own uid when it is kept)."""
        return self.uids[self.representative]

    def reason(self, row: int) -> str:
        """Why row `row` was dropped, naming the kept uid; "" when it was kept."""
        if self.keep[row]:
            return ""
        rep = self.uids[self.representative[row]]
        if self.method == "exact":
            return f"exact duplicate of {rep}"
        if self.method == "near":
            return f"near duplicate of {rep} (hamming {int(self.score[row])})"
        cluster = "" if self.cluster is None else f", cluster {int(self.cluster[row])}"
        return f"semantic duplicate of {rep} (cosine {self.score[row]:.3f}{cluster})"

    @cached_property
    def reasons(self) -> list[str]:
        """`reason(i)` for every row; built on first use because most rows are kept and need none."""
        out = [""] * len(self)
        for row in self.dropped.tolist():
            out[row] = self.reason(row)
        return out


# ----- input checks ------------------------------------------------------------------------------
def check_uids(uids: UidsLike, n: int) -> NDArray[Any]:
    """Uids as a 1-D array of strings or integers (row numbers when None); they break priority ties."""
    if uids is None:
        return np.arange(n, dtype=np.int64)
    arr = np.asarray(uids)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"uids must be a 1-D sequence of {n} values (one per row), got shape {arr.shape}")
    if arr.dtype.kind == "O":
        if not all(isinstance(u, str) for u in arr.tolist()):
            raise ValueError("uids must all be strings or all be integers")
        arr = arr.astype(str)
    if arr.dtype.kind not in "USiu":
        raise ValueError(f"uids must be strings or integers, got dtype {arr.dtype}")
    return arr


def check_priority(priority: ArrayLike | None, n: int) -> NDArray[np.float64] | None:
    """A finite float per row (higher is kept first), or None."""
    if priority is None:
        return None
    arr = np.asarray(priority)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"priority must be a 1-D array of {n} numbers (one per row), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"priority must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        row = int(bad[0])
        raise ValueError(f"priority must be finite; row {row} is {arr[row]} ({bad.size} such rows)")
    return arr


def uid_order(uids: NDArray[Any]) -> NDArray[np.int64]:
    """Rows sorted by uid; raises when a uid repeats, since ties could then depend on input order."""
    order = np.argsort(uids, kind="stable").astype(np.int64)
    ranked = uids[order]
    same = np.flatnonzero(ranked[1:] == ranked[:-1])
    if same.size:
        raise ValueError(f"uids must be unique; {ranked[same[0]]!r} appears more than once")
    return order


def processing_order(by_uid: NDArray[np.int64], priority: NDArray[np.float64] | None) -> NDArray[np.int64]:
    """Rows in the order they claim to be kept: highest priority first, ties by ascending uid.

    Depends on the rows' uids and priorities only, never on their positions in the input.
    """
    if priority is None:
        return by_uid
    uid_rank = np.empty_like(by_uid)
    uid_rank[by_uid] = np.arange(by_uid.shape[0], dtype=np.int64)
    return np.lexsort((uid_rank, -priority)).astype(np.int64)


# ----- greedy keep-first -------------------------------------------------------------------------
def greedy_keep(
    n: int, src: NDArray[np.int64], dst: NDArray[np.int64], score: NDArray[np.float64]
) -> tuple[NDArray[np.bool_], NDArray[np.int64], NDArray[np.float64]]:
    """Keep nodes 0..n-1 in order unless linked to an earlier kept node (SemDeDup's rule).

    Nodes are positions in processing order and every pair must have src < dst. A node is dropped iff
    some earlier *kept* node is linked to it; its representative is the first such node. Unlike
    union-find, this never chains: every dropped node is directly within the threshold of the node
    named in its reason, and no two kept nodes are linked.
    Returns (keep, representative position (itself when kept), score of the linking pair or NaN).
    """
    keep = np.ones(n, dtype=bool)
    rep = np.arange(n, dtype=np.int64)
    rep_score = np.full(n, np.nan, dtype=np.float64)
    if src.size == 0:
        return keep, rep, rep_score
    if np.any(src >= dst):
        raise AssertionError("greedy_keep needs pairs with src < dst")
    order = np.argsort(src, kind="stable")
    src, dst, score = src[order], dst[order], score[order]
    starts = np.flatnonzero(np.r_[True, src[1:] != src[:-1]])
    ends = np.r_[starts[1:], src.size]
    # Sources increase, and a node can only be dropped by a smaller one, so each is final when reached.
    for node, a, b in zip(src[starts].tolist(), starts.tolist(), ends.tolist(), strict=True):
        if not keep[node]:
            continue
        targets = dst[a:b]
        fresh = keep[targets]
        hit = targets[fresh]
        keep[hit] = False
        rep[hit] = node
        rep_score[hit] = score[a:b][fresh]
    return keep, rep, rep_score
