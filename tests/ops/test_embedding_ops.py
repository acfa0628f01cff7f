"""Embedding operators: heads give the numbers their weights say; the image-based baseline keeps
the clusters of the target set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from vlcurate.ops.embedding_ops import ClusterParams, HeadParams, ImageClusterFilter, LinearHead, load_head
from vlcurate.ops.pair_ops import embedding_array


def _batch(emb: np.ndarray) -> pa.Table:
    return pa.table({"uid": [f"{i:032x}" for i in range(len(emb))], "image_embedding": embedding_array(emb)})


def test_a_torch_linear_head_scores_like_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 1)
    torch.save(head.state_dict(), tmp_path / "aesthetic.pth")
    emb = np.random.default_rng(0).normal(size=(10, 16)).astype(np.float32)
    op = LinearHead(HeadParams(weights=str(tmp_path / "aesthetic.pth"), column="aesthetic", min=0.0))
    out = op.process(_batch(emb))
    want = head(torch.from_numpy(emb.astype(np.float16).astype(np.float32))).detach().numpy()[:, 0]
    got = np.asarray(out.column("aesthetic").to_numpy())
    assert np.allclose(got, want, atol=1e-4)
    keep = np.asarray(out.column("keep").to_numpy(zero_copy_only=False))
    assert np.array_equal(keep, want >= 0)
    assert all(
        r == "aesthetic<0" for r, k in zip(out.column("reason").to_pylist(), keep, strict=True) if not k
    )


def test_an_mlp_head_from_npz_and_bad_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    w1, b1, w2, b2 = rng.normal(size=(8, 4)), rng.normal(size=8), rng.normal(size=(1, 8)), rng.normal(size=1)
    np.savez(tmp_path / "h.npz", **{"0.weight": w1, "0.bias": b1, "1.weight": w2, "1.bias": b2})
    assert [w.shape for w, _ in load_head(tmp_path / "h.npz")] == [(8, 4), (1, 8)]
    op = LinearHead(HeadParams(weights=str(tmp_path / "h.npz"), column="nsfw", activation="sigmoid", max=0.5))
    x = rng.normal(size=(5, 4)).astype(np.float32)
    out = op.process(_batch(x))
    xh = x.astype(np.float16).astype(np.float32)
    want = 1 / (1 + np.exp(-(np.maximum(xh @ w1.T + b1, 0) @ w2.T + b2)[:, 0]))
    assert np.allclose(np.asarray(out.column("nsfw").to_numpy()), want, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_head(tmp_path / "missing.pth")
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="no 2-D"):
        load_head(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="expects 4-d input"):
        LinearHead(HeadParams(weights=str(tmp_path / "h.npz"))).process(_batch(np.zeros((2, 6), np.float32)))


def test_image_based_baseline_keeps_the_target_clusters(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    centers = np.eye(8, dtype=np.float32) * 5
    labels = np.repeat(np.arange(8), 50)
    pool = centers[labels] + rng.normal(scale=0.3, size=(400, 8)).astype(np.float32)
    targets = centers[[1, 5]] + rng.normal(scale=0.3, size=(2, 8)).astype(np.float32)
    np.save(tmp_path / "targets.npy", targets)
    op = ImageClusterFilter(
        ClusterParams(targets=str(tmp_path / "targets.npy"), n_clusters=8, train_per_cluster=50)
    )
    batches = [_batch(pool[:200]), _batch(pool[200:])]
    for b in batches:
        op.observe(b)
    op.finalize()
    kept = np.concatenate(
        [np.asarray(op.process(b).column("keep").to_numpy(zero_copy_only=False)) for b in batches]
    )
    assert set(labels[kept]) == {1, 5} and kept.sum() == 100
    small = ImageClusterFilter(ClusterParams(targets=str(tmp_path / "targets.npy"), n_clusters=1000))
    small.observe(batches[0])
    with pytest.raises(ValueError, match="for 1000 clusters"):
        small.finalize()
