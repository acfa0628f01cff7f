"""Dedup operators decide over every shard at once and name the pair kept in each duplicate's place."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from PIL import Image

from vlcurate.ops.dedup_ops import (
    DedupParams,
    ExactDedup,
    NearDedup,
    NearParams,
    SemanticDedup,
    SemanticParams,
)
from vlcurate.ops.image_ops import ImageQuality
from vlcurate.ops.pair_ops import embedding_array


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def _shard(name: str, uids: list[str], images: list[bytes], extra: dict[str, Any] | None = None) -> pa.Table:
    cols: dict[str, Any] = {
        "uid": uids,
        "shard": [name] * len(uids),
        "text": ["x"] * len(uids),
        "image": pa.array(images, pa.binary()),
    }
    cols.update(extra or {})
    return pa.table(cols)


def _run(op: Any, batches: list[pa.Table]) -> list[pa.Table]:
    for b in batches:
        op.observe(b)
    op.finalize()
    return [op.process(b) for b in batches]


def test_exact_and_near_duplicates_across_shards(coco_pairs: list[Any]) -> None:
    photos = [Image.open(p.path).convert("RGB") for p in coco_pairs[:4]]
    a = _shard("s0", ["a0", "a1", "a2"], [_jpeg(photos[0]), _jpeg(photos[1]), _jpeg(photos[2])])
    # shard 1: an exact copy of a0, a re-encoded copy of a1 (near), and a new photo
    b = _shard("s1", ["b0", "b1", "b2"], [_jpeg(photos[0]), _jpeg(photos[1], quality=40), _jpeg(photos[3])])
    exact = _run(ExactDedup(DedupParams()), [a, b])
    assert exact[1].column("reason").to_pylist()[0] == "exact duplicate of a0@s0:0"
    assert exact[0].column("keep").to_pylist() == [True, True, True]
    assert exact[1].column("keep").to_pylist() == [False, True, True]
    with_hash = [ImageQuality().process(t) for t in exact]
    near = _run(NearDedup(NearParams(max_distance=6)), with_hash)
    assert near[1].column("keep").to_pylist() == [False, False, True]
    assert near[1].column("reason").to_pylist()[0] == "exact duplicate of a0@s0:0"  # the first reason stays
    assert near[1].column("reason").to_pylist()[1].startswith("near duplicate of a1@s0:1")


def test_priority_decides_who_is_kept_and_semantic_dedup(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 32)).astype(np.float32)
    emb0 = base[:3]
    emb1 = np.vstack([base[0] + 0.001, base[3:5]])  # b0 is a near-identical copy of a0
    img = [b"x"] * 3
    a = _shard(
        "s0", ["a0", "a1", "a2"], img, {"image_embedding": embedding_array(emb0), "q": [0.1, 0.5, 0.5]}
    )
    b = _shard(
        "s1", ["b0", "b1", "b2"], img, {"image_embedding": embedding_array(emb1), "q": [0.9, 0.5, 0.5]}
    )
    out = _run(SemanticDedup(SemanticParams(priority="q", n_clusters=2)), [a, b])
    assert out[0].column("keep").to_pylist() == [False, True, True]  # a0 loses to its better-scored copy
    assert out[0].column("reason").to_pylist()[0].startswith("semantic duplicate of b0@s1:0 (cosine 1.000")
    assert out[1].column("keep").to_pylist() == [True, True, True]
