"""Collection: pool images from anything `io.sources.open_source` reads, with source and licence,
then retrieval over a faiss index of image embeddings using each class's descriptions."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.base.images import decode_image
from vlcurate.builder.spec import DatasetSpec
from vlcurate.io.sources import open_source

_LICENSE_KEYS = ("license", "licence", "license_name", "LICENSE", "rights")


class CollectError(ValueError):
    """The pool cannot be read or holds nothing usable."""


@dataclass
class PoolImage:
    """One candidate image with where it came from."""

    uid: str
    key: str
    data: bytes
    source: str
    license: str
    caption: str | None = None
    sha256: str = ""
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class PoolReport:
    read: int = 0
    unreadable: int = 0
    license_rejected: int = 0
    duplicates_in_pool: int = 0
    errors: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "unreadable": self.unreadable,
            "license_rejected": self.license_rejected,
            "duplicates_in_pool": self.duplicates_in_pool,
            "errors": self.errors[:20],
        }


def _license_of(meta: dict[str, Any]) -> str:
    for k in _LICENSE_KEYS:
        v = meta.get(k)
        if v not in (None, ""):
            return str(v)
    inner = meta.get("json")
    if isinstance(inner, dict):
        return _license_of(inner)
    return "unknown"


def _bytes_of(image: bytes | None, ref: str | None) -> bytes | None:
    if image is not None:
        return image
    if ref and Path(ref).is_file():
        return Path(ref).read_bytes()
    return None


def read_pool(
    pools: Sequence[str], spec: DatasetSpec, *, limit: int | None = None, fetch_timeout: float = 10.0
) -> tuple[list[PoolImage], PoolReport]:
    """Every readable image of the pools (exact byte duplicates once), licence-filtered by the spec.

    Images given by URL (manifests, URL lists) are downloaded by `io.fetch` with a deadline per
    attempt and retries; each failed URL is counted with its reason ("timeout after 10s", "HTTP 404")."""
    from vlcurate.io.fetch import resolve_images

    if not pools:
        raise CollectError("no pool given: pass --pool with folders, shards, Parquet files or manifests")
    report = PoolReport()
    seen: set[str] = set()
    out: list[PoolImage] = []
    for pool in pools:
        try:
            source = open_source(pool)
        except (ValueError, OSError) as exc:
            raise CollectError(f"cannot read pool {pool}: {exc}") from None
        for shard in source.shards():
            try:
                samples = list(source.iter_samples(shard))
                if any(s.image is None and s.image_ref and "://" in s.image_ref for s in samples):
                    samples = resolve_images(samples, timeout=fetch_timeout, retries=1)
            except Exception as exc:  # a broken shard is counted, the rest still read
                report.errors.append(f"{shard.name}: {type(exc).__name__}: {exc}")
                continue
            for s in samples:
                report.read += 1
                data = _bytes_of(s.image, s.image_ref)
                if not data:  # a missing caption is fine here; undecodable bytes are the tools' call
                    report.unreadable += 1
                    if s.error and len(report.errors) < 50:
                        report.errors.append(f"{s.image_ref or s.key}: {s.error}")
                    continue
                digest = hashlib.sha256(data).hexdigest()
                if digest in seen:
                    report.duplicates_in_pool += 1
                    continue
                lic = _license_of(s.meta)
                if not spec.accepts_license(lic):
                    report.license_rejected += 1
                    continue
                seen.add(digest)
                out.append(PoolImage(s.uid, s.key, data, s.source or f"{pool}#{s.key}", lic, s.text, digest))
                if limit is not None and len(out) >= limit:
                    return out, report
    if not out:
        raise CollectError(
            f"the pool holds no usable image (read {report.read}, unreadable {report.unreadable}, "
            f"licence rejected {report.license_rejected})"
        )
    return out, report


def embed_images(scorer: Any, datas: Sequence[bytes], batch: int = 256) -> np.ndarray:
    """Normalised float32 embeddings; an image that does not decode gets a zero row."""
    size = int(scorer.preprocessing.image_size)
    out = np.zeros((len(datas), scorer.embed_dim), dtype=np.float32)
    for start in range(0, len(datas), batch):
        arrays, rows = [], []
        for i, d in enumerate(datas[start : start + batch]):
            dec = decode_image(d, size)
            if dec.array is not None:
                arrays.append(dec.array)
                rows.append(start + i)
        if arrays:
            out[rows] = scorer.encode_images(np.stack(arrays)).cpu().numpy()
    return out


def class_text_embeddings(scorer: Any, spec: DatasetSpec) -> np.ndarray:
    """One unit vector per class: its positive prompts' mean, pushed away from its negatives."""
    texts: list[str] = []
    spans = []
    for c in spec.classes:  # one batch for every prompt of every class
        spans.append((len(texts), len(c.prompts()), len(c.negative)))
        texts += c.prompts() + c.negative
    emb = scorer.encode_texts(texts).cpu().numpy()
    rows = []
    for start, n_pos, n_neg in spans:
        pos = emb[start : start + n_pos].mean(0)
        if n_neg:
            pos = pos - 0.3 * emb[start + n_pos : start + n_pos + n_neg].mean(0)
        rows.append(pos / max(float(np.linalg.norm(pos)), 1e-8))
    return np.stack(rows).astype(np.float32)


@dataclass
class Retrieval:
    """Which pool images retrieval picked, and each image's best class by similarity."""

    chosen: list[int]
    best_class: np.ndarray
    similarity: np.ndarray  # (n_images, n_classes)


def retrieve(
    image_emb: np.ndarray,
    text_emb: np.ndarray,
    per_class: int,
    *,
    exclude: Callable[[int], bool] | None = None,
) -> Retrieval:
    """Top `per_class` images per class from a faiss inner-product index (cosine on unit vectors)."""
    import faiss

    index = faiss.IndexFlatIP(image_emb.shape[1])
    index.add(np.ascontiguousarray(image_emb, dtype=np.float32))
    k = min(len(image_emb), max(1, per_class))
    _, ids = index.search(np.ascontiguousarray(text_emb, dtype=np.float32), k)
    chosen: dict[int, None] = {}
    for row in ids:
        for i in row.tolist():
            if i >= 0 and (exclude is None or not exclude(i)):
                chosen[i] = None
    sim = image_emb @ text_emb.T
    return Retrieval(sorted(chosen), sim.argmax(1), sim)


def image_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size
