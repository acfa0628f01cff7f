"""Deduplication over a whole dataset: exact (content hash), near (perceptual hash within a Hamming
distance) and semantic (SemDeDup: k-means, then near-identical embeddings within each cluster).

Pure functions over NumPy arrays that the dedup operators call once the engine has gathered a column
from every shard: each returns a `DedupResult` with keep, the reason for each drop and the kept uid
that stands in for it, chosen deterministically by priority and then uid.
"""

from __future__ import annotations

from vlcurate.dedup.exact import content_hashes, exact_dedup, exact_dedup_bytes
from vlcurate.dedup.near import near_dedup, near_pairs, phashes
from vlcurate.dedup.results import DedupResult
from vlcurate.dedup.semantic import semantic_dedup

__all__ = [
    "DedupResult",
    "content_hashes",
    "exact_dedup",
    "exact_dedup_bytes",
    "near_dedup",
    "near_pairs",
    "phashes",
    "semantic_dedup",
]
