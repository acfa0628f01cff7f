"""Semantic deduplication (SemDeDup, Abbas et al. 2023): k-means over L2-normalised embeddings, then
within each cluster drop an item whose cosine similarity to an already kept item exceeds 1 - eps.

Bounded memory for 1M x 512 embeddings: the caller's array (float16 is fine) is never copied whole.
Rows are normalised to float32 one block or one cluster at a time; k-means trains on a sample (at
most `max_points_per_centroid` per centroid); assignment runs in blocks against an `IndexFlatIP` of
the centroids; within a cluster the similarities are a blocked matrix product (at most
`sim_block_elems` floats at a time) from which only the pairs above the threshold are kept.

Processing order inside a cluster: by `priority` when given (e.g. a quality score, highest first),
otherwise as in the paper, farthest from the centroid first (`centroid_order="far"`); ties by uid.
Pairs that fall into different clusters are not compared: that is SemDeDup's trade of recall for speed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from vlcurate.dedup.results import (
    DedupResult,
    UidsLike,
    check_priority,
    check_uids,
    greedy_keep,
    processing_order,
    uid_order,
)


def _check_embeddings(embeddings: ArrayLike) -> NDArray[np.floating]:
    if not isinstance(embeddings, np.ndarray):
        embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array (rows x dim), got shape {embeddings.shape}")
    if embeddings.shape[0] == 0 or embeddings.shape[1] == 0:
        raise ValueError(f"semantic_dedup needs at least one row and one dimension; got {embeddings.shape}")
    if embeddings.dtype not in (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"embeddings must be float16, float32 or float64, got dtype {embeddings.dtype}")
    return embeddings


def _normalised(block: NDArray[np.floating], inv_norm: NDArray[np.float32]) -> NDArray[np.float32]:
    """Rows as unit float32 vectors (contiguous, as faiss wants)."""
    out = np.asarray(block, dtype=np.float32) * inv_norm[:, None]
    return np.ascontiguousarray(out, dtype=np.float32)


def inverse_norms(embeddings: NDArray[np.floating], block_size: int = 1 << 16) -> NDArray[np.float32]:
    """1 / ||row|| for each row, checking in blocks that every row is finite and non-zero."""
    n = embeddings.shape[0]
    inv = np.empty(n, dtype=np.float32)
    for start in range(0, n, block_size):
        block = np.asarray(embeddings[start : start + block_size], dtype=np.float32)
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            bad = int(np.flatnonzero(~finite)[0]) + start
            raise ValueError(f"embeddings must be finite; row {bad} contains NaN or inf")
        norm = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float64))
        if np.any(norm == 0):
            bad = int(np.flatnonzero(norm == 0)[0]) + start
            raise ValueError(f"embeddings must be non-zero to normalise; row {bad} is all zeros")
        inv[start : start + block.shape[0]] = (1.0 / norm).astype(np.float32)
    return inv


def cluster_pairs(
    x: NDArray[np.float32], threshold: float, sim_block_elems: int = 1 << 24
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.float64]]:
    """Pairs (i < j) of unit rows with cosine > threshold, from a blocked upper-triangle product."""
    m = x.shape[0]
    rows = max(1, min(m, sim_block_elems // max(1, m)))
    out_i, out_j, out_s = [], [], []
    for start in range(0, m, rows):
        stop = min(m, start + rows)
        sim = x[start:stop] @ x[start:].T  # columns from `start` on: each pair is seen once
        bi, bj = np.nonzero(sim > threshold)
        sel = bj > bi  # bj is relative to `start`, like bi; drops the diagonal and the lower triangle
        bi, bj = bi[sel], bj[sel]
        out_i.append(bi + start)
        out_j.append(bj + start)
        out_s.append(sim[bi, bj].astype(np.float64))
    return (
        np.concatenate(out_i).astype(np.int64),
        np.concatenate(out_j).astype(np.int64),
        np.concatenate(out_s),
    )


def default_n_clusters(n: int) -> int:
    """About sqrt(n): balances assignment (n * k) against within-cluster pairs (n^2 / k)."""
    return max(1, min(n, round(math.sqrt(n))))


def train_centroids(
    embeddings: NDArray[np.floating],
    inv_norm: NDArray[np.float32],
    rows: NDArray[np.int64],
    n_clusters: int,
    niter: int,
    seed: int,
) -> NDArray[np.float32]:
    """Spherical k-means (faiss) on the given sample rows; unit centroids of shape (k, dim)."""
    import faiss

    sample = _normalised(embeddings[rows], inv_norm[rows])
    km = faiss.Kmeans(
        sample.shape[1],
        n_clusters,
        niter=niter,
        seed=seed,
        spherical=True,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(1, sample.shape[0]),  # already sampled: faiss must not resample
    )
    km.train(sample)
    return np.ascontiguousarray(km.centroids, dtype=np.float32)


def assign(
    embeddings: NDArray[np.floating],
    inv_norm: NDArray[np.float32],
    centroids: NDArray[np.float32],
    block_size: int = 1 << 16,
) -> tuple[NDArray[np.int64], NDArray[np.float32]]:
    """Nearest centroid (by cosine) of every row and the cosine to it, a block at a time."""
    import faiss

    index = faiss.IndexFlatIP(centroids.shape[1])
    index.add(centroids)
    n = embeddings.shape[0]
    labels = np.empty(n, dtype=np.int64)
    sims = np.empty(n, dtype=np.float32)
    for start in range(0, n, block_size):
        stop = min(n, start + block_size)
        d, i = index.search(_normalised(embeddings[start:stop], inv_norm[start:stop]), 1)
        labels[start:stop] = i[:, 0]
        sims[start:stop] = d[:, 0]
    return labels, sims


def semantic_dedup(
    embeddings: ArrayLike,
    uids: UidsLike = None,
    priority: ArrayLike | None = None,
    eps: float = 0.05,
    n_clusters: int | None = None,
    niter: int = 10,
    max_points_per_centroid: int = 128,
    seed: int = 0,
    centroid_order: Literal["far", "near"] = "far",
    block_size: int = 1 << 16,
    sim_block_elems: int = 1 << 24,
) -> DedupResult:
    """SemDeDup over the whole dataset; the result carries each row's cluster id.

    A row is dropped when its cosine similarity to a kept row of its cluster exceeds 1 - eps; the
    kept row named in its reason is the first such one in processing order.
    """
    emb = _check_embeddings(embeddings)
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")
    if centroid_order not in ("far", "near"):
        raise ValueError(f"centroid_order must be 'far' or 'near', got {centroid_order!r}")
    if niter < 1 or max_points_per_centroid < 1:
        raise ValueError("niter and max_points_per_centroid must be at least 1")
    n = int(emb.shape[0])
    k = default_n_clusters(n) if n_clusters is None else int(n_clusters)
    if not 1 <= k <= n:
        raise ValueError(f"n_clusters must be between 1 and the number of rows ({n}), got {k}")
    uid_arr = check_uids(uids, n)
    prio = check_priority(priority, n)
    by_uid = uid_order(uid_arr)
    inv_norm = inverse_norms(emb, block_size)

    # The sample is drawn over rows sorted by uid, so it does not depend on the input's row order.
    n_sample = min(n, k * max_points_per_centroid)
    rng = np.random.default_rng(seed)
    picks = np.sort(rng.choice(n, size=n_sample, replace=False)) if n_sample < n else np.arange(n)
    centroids = train_centroids(emb, inv_norm, by_uid[picks], k, niter, seed)
    labels, centroid_sim = assign(emb, inv_norm, centroids, block_size)

    if prio is None:  # the paper keeps the member least similar to its centroid
        prio = (-centroid_sim if centroid_order == "far" else centroid_sim).astype(np.float64)
    order = processing_order(by_uid, prio)
    grouped = order[np.argsort(labels[order], kind="stable")]  # by cluster, processing order within
    bounds = np.searchsorted(labels[grouped], np.arange(k + 1))

    threshold = 1.0 - eps
    keep = np.ones(n, dtype=bool)
    representative = np.arange(n, dtype=np.int64)
    score = np.full(n, np.nan, dtype=np.float64)
    for c in range(k):
        members = grouped[bounds[c] : bounds[c + 1]]
        if members.shape[0] < 2:
            continue
        x = _normalised(emb[members], inv_norm[members])
        src, dst, sim = cluster_pairs(x, threshold, sim_block_elems)
        if src.size == 0:
            continue
        keep_c, rep_c, sim_c = greedy_keep(members.shape[0], src, dst, sim)
        keep[members] = keep_c
        representative[members] = members[rep_c]
        score[members] = sim_c
    return DedupResult("semantic", uid_arr, keep, representative, score, labels)
