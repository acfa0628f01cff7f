"""Deduplication across the whole dataset, not per shard: exact (image content hash), near (pHash
within a Hamming distance) and semantic (SemDeDup on image embeddings). Each is a global step: it
sees every pair still kept, decides with `vlcurate.dedup`, then marks the duplicates with the uid
of the pair kept in their place (written `uid@shard:row`, since web pools repeat uids)."""

from __future__ import annotations

from abc import abstractmethod
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.dedup import DedupResult, content_hashes, exact_dedup, near_dedup, semantic_dedup
from vlcurate.ops.base import Operator, OpParams, keep_mask, mark
from vlcurate.ops.pair_ops import embeddings_of
from vlcurate.ops.registry import register


class DedupParams(OpParams):
    priority: str | None = Field(
        default=None,
        description="Numeric column: the highest value of a duplicate group is kept (else by uid).",
    )
    among: Literal["kept", "all"] = Field(
        default="kept", description="Deduplicate pairs still kept, or all pairs."
    )


class _GlobalDedup(Operator):
    kind = "global"

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._features: list[Any] = []
        self._ids: list[str] = []
        self._priority: list[np.ndarray] = []
        self._rows: dict[str, int] = {}
        self._decision: dict[str, tuple[bool, str]] = {}

    def required_columns(self) -> tuple[str, ...]:
        p = self.params
        assert isinstance(p, DedupParams)
        return (*self.feature_columns(), *((p.priority,) if p.priority else ()))

    def reads_dropped(self) -> tuple[str, ...]:
        return self.required_columns() if self.params.among == "all" else ()  # type: ignore[attr-defined]

    @abstractmethod
    def feature_columns(self) -> tuple[str, ...]: ...

    @abstractmethod
    def features(self, batch: pa.Table, rows: np.ndarray) -> Any:
        """The dedup key of the selected rows (hashes, digests or embeddings)."""

    @abstractmethod
    def decide(self, features: Any, uids: list[str], priority: np.ndarray | None) -> DedupResult: ...

    def _row_ids(self, batch: pa.Table, counters: dict[str, int]) -> list[str]:
        """`uid@shard:row`, numbering rows per shard so that both passes name a row the same way."""
        uids = batch.column("uid").to_pylist()
        shards = batch.column("shard").to_pylist() if "shard" in batch.column_names else [""] * len(uids)
        out = []
        for uid, shard in zip(uids, shards, strict=True):
            k = counters.get(shard, 0)
            counters[shard] = k + 1
            out.append(f"{uid}@{shard}:{k}")
        return out

    def _selected(self, batch: pa.Table) -> np.ndarray:
        if self.params.among == "all":  # type: ignore[attr-defined]
            return np.ones(batch.num_rows, dtype=bool)
        return keep_mask(batch)

    def observe(self, batch: pa.Table) -> None:
        ids = self._row_ids(batch, self._rows)
        rows = np.flatnonzero(self._selected(batch) & self._usable(batch))
        self._ids += [ids[i] for i in rows]
        self._features.append(self.features(batch, rows))
        p = self.params
        assert isinstance(p, DedupParams)
        if p.priority:
            v = np.asarray(batch.column(p.priority).to_numpy(zero_copy_only=False), dtype=np.float64)[rows]
            self._priority.append(
                np.nan_to_num(v, nan=-np.inf, posinf=np.finfo(np.float64).max, neginf=-1e300)
            )

    def _usable(self, batch: pa.Table) -> np.ndarray:
        """Rows that have the feature at all (others are left to other steps)."""
        return np.ones(batch.num_rows, dtype=bool)

    def finalize(self) -> None:
        priority = np.concatenate(self._priority) if self._priority else None
        if priority is not None:
            priority = np.where(np.isfinite(priority), priority, -1e300)
        if self._ids:
            result = self.decide(self._stack(), self._ids, priority)
            reasons = result.reasons
            self._decision = {
                uid: (bool(k), r) for uid, k, r in zip(self._ids, result.keep.tolist(), reasons, strict=True)
            }
        self._features, self._priority, self._rows = [], [], {}
        self._ids = []

    def _stack(self) -> Any:
        return np.concatenate(self._features)

    def process(self, batch: pa.Table) -> pa.Table:
        ids = self._row_ids(batch, self._rows)
        keep = np.ones(batch.num_rows, dtype=bool)
        reasons: list[str | None] = [None] * batch.num_rows
        for i, rid in enumerate(ids):
            decided = self._decision.get(rid)
            if decided is not None and not decided[0]:
                keep[i], reasons[i] = False, decided[1]
        return mark(batch, keep, reasons)


@register
class ExactDedup(_GlobalDedup):
    """Exact duplicates by a BLAKE2b hash of the image bytes, across the whole dataset."""

    name = "exact_dedup"
    Params = DedupParams
    requires = ("uid", "image")

    def feature_columns(self) -> tuple[str, ...]:
        return ("image",)

    def _usable(self, batch: pa.Table) -> np.ndarray:
        return np.asarray(batch.column("image").is_valid().to_numpy(zero_copy_only=False), dtype=bool)

    def features(self, batch: pa.Table, rows: np.ndarray) -> Any:
        images = batch.column("image").take(pa.array(rows, pa.int64())).to_pylist()
        return content_hashes(images) if len(images) else np.zeros((0, 16), np.uint8)

    def decide(self, features: Any, uids: list[str], priority: np.ndarray | None) -> DedupResult:
        return exact_dedup(features, uids=uids, priority=priority)


class NearParams(DedupParams):
    max_distance: int = Field(default=4, ge=0, le=16, description="Largest Hamming distance between pHashes.")
    column: str = Field(default="phash", description="64-bit pHash column (from image_quality).")


@register
class NearDedup(_GlobalDedup):
    """Near duplicates: 64-bit perceptual hashes within `max_distance` bits (faiss multi-index hashing)."""

    name = "near_dedup"
    Params = NearParams

    def feature_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def _usable(self, batch: pa.Table) -> np.ndarray:
        if "phash_valid" in batch.column_names:
            return np.asarray(batch.column("phash_valid").to_numpy(zero_copy_only=False), dtype=bool)
        return np.ones(batch.num_rows, dtype=bool)

    def features(self, batch: pa.Table, rows: np.ndarray) -> Any:
        col = np.asarray(batch.column(self.params.column).to_numpy(zero_copy_only=False))  # type: ignore[attr-defined]
        return col[rows].astype(np.uint64)

    def decide(self, features: Any, uids: list[str], priority: np.ndarray | None) -> DedupResult:
        return near_dedup(features, uids=uids, priority=priority, max_distance=self.params.max_distance)  # type: ignore[attr-defined]


class SemanticParams(DedupParams):
    eps: float = Field(default=0.05, gt=0, lt=1, description="Drop when cosine similarity > 1 - eps.")
    n_clusters: int | None = Field(default=None, ge=1, description="k-means clusters (default sqrt(n)).")
    column: str = Field(
        default="image_embedding", description="Embedding column (clip_score embeddings: true)."
    )
    seed: int = 0


@register
class SemanticDedup(_GlobalDedup):
    """SemDeDup: k-means over image embeddings, then near-identical embeddings within each cluster."""

    name = "semantic_dedup"
    Params = SemanticParams

    def provides(self) -> tuple[str, ...]:
        return ("keep", "reason")

    def feature_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def _usable(self, batch: pa.Table) -> np.ndarray:
        x = embeddings_of(batch, self.params.column)  # type: ignore[attr-defined]
        return np.isfinite(x).all(axis=1) & (np.abs(x).sum(axis=1) > 0)

    def features(self, batch: pa.Table, rows: np.ndarray) -> Any:
        return embeddings_of(batch, self.params.column)[rows].astype(np.float16)  # type: ignore[attr-defined]

    def decide(self, features: Any, uids: list[str], priority: np.ndarray | None) -> DedupResult:
        p = self.params
        assert isinstance(p, SemanticParams)
        n_clusters = p.n_clusters if p.n_clusters is None else min(p.n_clusters, len(uids))
        return semantic_dedup(
            features, uids=uids, priority=priority, eps=p.eps, n_clusters=n_clusters, seed=p.seed
        )
