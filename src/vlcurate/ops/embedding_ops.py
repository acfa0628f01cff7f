"""Operators on embeddings: linear heads (LAION-aesthetic or NSFW style) and DataComp's image-based
baseline (keep the pool's k-means clusters that the target set's images fall into)."""

from __future__ import annotations

from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, apply_bounds, mark, set_column
from vlcurate.ops.fingerprint import file_identity
from vlcurate.ops.pair_ops import embeddings_of
from vlcurate.ops.registry import register


def load_head(path: str | Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """The layers (weight (out, in), bias (out,)) of a linear head or an MLP of linear layers.

    Reads a PyTorch state dict (`.pt`/`.pth`: LAION's aesthetic predictor is one nn.Linear), a
    safetensors file, or an `.npz` with `weight`/`bias`. Layers are taken in key order; an MLP gets
    a ReLU between layers.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"head weights not found: {p}")
    tensors: dict[str, np.ndarray]
    if p.suffix == ".npz":
        with np.load(p) as z:
            tensors = {k: z[k] for k in z.files}
    elif p.suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = dict(load_file(str(p)))
    else:
        import torch

        state = torch.load(p, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        tensors = {k: v.float().numpy() for k, v in state.items() if hasattr(v, "numpy")}
    layers = []
    for key in sorted(k for k in tensors if k.endswith("weight") and tensors[k].ndim == 2):
        bias_key = key[: -len("weight")] + "bias"
        w = tensors[key].astype(np.float32)
        b = tensors.get(bias_key, np.zeros(w.shape[0], np.float32)).astype(np.float32)
        layers.append((w, b))
    if not layers:
        raise ValueError(f"{p}: no 2-D '...weight' tensors found (keys: {sorted(tensors)[:10]})")
    for (w1, _), (w2, _) in pairwise(layers):
        if w2.shape[1] != w1.shape[0]:
            raise ValueError(f"{p}: layer shapes do not chain ({w1.shape} then {w2.shape})")
    return layers


class HeadParams(OpParams):
    weights: str = Field(description="Path to the head's weights (.pth state dict, .safetensors or .npz).")
    column: str = Field(default="aesthetic", description="Output column.")
    input: str = Field(
        default="image_embedding", description="Embedding column (from clip_score embeddings=true)."
    )
    activation: Literal["none", "sigmoid"] = Field(default="none", description="Applied to the output.")
    min: float | None = Field(default=None, description="Drop pairs scoring below this.")
    max: float | None = Field(default=None, description="Drop pairs scoring above this (e.g. NSFW).")


@register
class LinearHead(Operator):
    """A linear head (or small MLP) on embeddings: LAION-aesthetic, NSFW-style detectors; optional bounds."""

    name = "linear_head"
    kind = "filter"
    Params = HeadParams

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._layers: list[tuple[np.ndarray, np.ndarray]] | None = None

    def required_columns(self) -> tuple[str, ...]:
        return (self.params.input,)  # type: ignore[attr-defined]

    def provides(self) -> tuple[str, ...]:
        return (self.params.column, "keep", "reason")  # type: ignore[attr-defined]

    def stat_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def resources(self) -> dict[str, Any]:
        return {"weights": file_identity(self.params.weights)}  # type: ignore[attr-defined]

    def setup(self) -> None:
        if self._layers is None:
            self._layers = load_head(self.params.weights)  # type: ignore[attr-defined]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, HeadParams)
        self.setup()
        assert self._layers is not None
        x = embeddings_of(batch, p.input)
        if x.shape[1] != self._layers[0][0].shape[1]:
            raise ValueError(
                f"{p.weights}: head expects {self._layers[0][0].shape[1]}-d input, got {x.shape[1]}"
            )
        for k, (w, b) in enumerate(self._layers):
            x = x @ w.T + b
            if k < len(self._layers) - 1:
                x = np.maximum(x, 0.0)
        y = x[:, 0] if x.shape[1] == 1 else x.max(axis=1)
        if p.activation == "sigmoid":
            y = 1.0 / (1.0 + np.exp(-y))
        batch = set_column(batch, p.column, pa.array(y.astype(np.float32), pa.float32()))
        keep = np.isfinite(y)
        reasons: list[str | None] = [None if k else f"no {p.input}" for k in keep]
        apply_bounds(y, p.min, p.max, p.column, keep, reasons)
        return mark(batch, keep, reasons)


class ClusterParams(OpParams):
    targets: str = Field(description="A .npy of target-set image embeddings (e.g. ImageNet training images).")
    n_clusters: int = Field(default=1000, ge=2, le=1_000_000, description="k for k-means over the pool.")
    input: str = Field(default="image_embedding", description="Embedding column.")
    seed: int = 0
    train_per_cluster: int = Field(
        default=64, ge=8, description="k-means trains on at most k times this many points."
    )


@register
class ImageClusterFilter(Operator):
    """DataComp's image-based baseline: k-means the pool's image embeddings; keep the clusters that
    contain the nearest centroid of some target image."""

    name = "image_cluster_filter"
    kind = "global"
    Params = ClusterParams

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._seen: list[np.ndarray] = []
        self._index: Any = None
        self.kept_clusters: set[int] = set()

    def required_columns(self) -> tuple[str, ...]:
        return (self.params.input,)  # type: ignore[attr-defined]

    def provides(self) -> tuple[str, ...]:
        return ("image_cluster", "keep", "reason")

    def reads_dropped(self) -> tuple[str, ...]:
        return (self.params.input,)  # type: ignore[attr-defined]  # k-means over the whole pool

    def resources(self) -> dict[str, Any]:
        return {"targets": file_identity(self.params.targets)}  # type: ignore[attr-defined]

    def check(self) -> None:
        import faiss  # noqa: F401 - the step needs it to cluster

        p = self.params
        assert isinstance(p, ClusterParams)
        if not Path(p.targets).exists():
            raise FileNotFoundError(f"target embeddings not found: {p.targets}")
        targets = np.load(p.targets, mmap_mode="r")
        if targets.ndim != 2:
            raise ValueError(f"{p.targets}: target embeddings have shape {targets.shape}, expected (n, d)")

    def observe(self, batch: pa.Table) -> None:
        x = embeddings_of(batch, self.params.input)  # type: ignore[attr-defined]
        self._seen.append(x[np.isfinite(x).all(axis=1)].astype(np.float16))

    def finalize(self) -> None:
        import faiss

        p = self.params
        assert isinstance(p, ClusterParams)
        pool = np.concatenate(self._seen).astype(np.float32) if self._seen else np.zeros((0, 1), np.float32)
        self._seen = []
        if len(pool) < p.n_clusters:
            raise ValueError(f"image_cluster_filter: {len(pool)} embeddings for {p.n_clusters} clusters")
        targets = np.load(p.targets).astype(np.float32)
        if targets.ndim != 2 or targets.shape[1] != pool.shape[1]:
            raise ValueError(
                f"{p.targets}: target embeddings have shape {targets.shape}, pool has d={pool.shape[1]}"
            )
        faiss.normalize_L2(pool)
        faiss.normalize_L2(targets)
        rng = np.random.default_rng(p.seed)
        sample = pool[
            rng.choice(len(pool), min(len(pool), p.n_clusters * p.train_per_cluster), replace=False)
        ]
        km = faiss.Kmeans(pool.shape[1], p.n_clusters, niter=20, seed=p.seed, spherical=True, verbose=False)
        km.train(sample)
        self._index = faiss.IndexFlatIP(pool.shape[1])
        self._index.add(km.centroids)
        _, nearest = self._index.search(targets, 1)
        self.kept_clusters = {int(c) for c in nearest[:, 0]}

    def process(self, batch: pa.Table) -> pa.Table:
        import faiss

        x = embeddings_of(batch, self.params.input)  # type: ignore[attr-defined]
        ok = np.isfinite(x).all(axis=1)
        cluster = np.full(len(x), -1, dtype=np.int64)
        if ok.any():
            xs = np.ascontiguousarray(x[ok])
            faiss.normalize_L2(xs)
            _, idx = self._index.search(xs, 1)
            cluster[ok] = idx[:, 0]
        keep = np.array([c in self.kept_clusters for c in cluster])
        batch = set_column(batch, "image_cluster", pa.array(cluster, pa.int64()))
        reasons = [
            None if k else ("no image embedding" if c < 0 else f"image cluster {c} not near the target set")
            for k, c in zip(keep, cluster, strict=True)
        ]
        return mark(batch, keep, reasons)
