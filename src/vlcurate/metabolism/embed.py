"""Joint image and question embeddings for clustering failures and measuring training coverage.

One vector per item: the scorer's normalised image embedding and its question embedding side by
side, scaled so the dot product of two items is the mean of their image and question cosines.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from vlcurate.base.images import decode_image

if TYPE_CHECKING:
    from vlcurate.models.scorer import ClipScorer

BATCH = 64


def _bytes(image: bytes | str | None) -> bytes | None:
    if image is None or isinstance(image, bytes):
        return image
    p = Path(image)
    return p.read_bytes() if p.is_file() else None


def embed_items(
    scorer: ClipScorer,
    images: Sequence[bytes | str | None],
    texts: Sequence[str],
    *,
    label: str | None = None,
) -> np.ndarray:
    """(N, 2 * dim) float32; an item without a readable image gets zeros in the image half.
    With `label`, a progress bar (a training pool can be large)."""
    n, size = len(texts), scorer.preprocessing.image_size
    dim = scorer.embed_dim
    img = np.zeros((n, dim), dtype=np.float32)
    with _Bar(label, 2 * n) as bar:  # images, then texts
        img, txt = _embed(scorer, images, texts, n, size, dim, img, bar)
    return (np.concatenate([img, txt], axis=1) / np.sqrt(2.0)).astype(np.float32)


class _Bar:
    """A rich progress bar over items, or nothing when `label` is None."""

    def __init__(self, label: str | None, total: int) -> None:
        self.progress: Progress | None = None
        if label is not None:
            self.progress = Progress(
                TextColumn(f"[bold]{label}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self.task = self.progress.add_task(label, total=total)

    def __enter__(self) -> _Bar:
        if self.progress is not None:
            self.progress.start()
        return self

    def advance(self, k: int) -> None:
        if self.progress is not None:
            self.progress.advance(self.task, k)

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()


def _embed(
    scorer: ClipScorer,
    images: Sequence[bytes | str | None],
    texts: Sequence[str],
    n: int,
    size: int,
    dim: int,
    img: np.ndarray,
    bar: _Bar,
) -> tuple[np.ndarray, np.ndarray]:
    for start in range(0, n, BATCH):
        idx, arrays = [], []
        for i in range(start, min(n, start + BATCH)):
            dec = decode_image(_bytes(images[i]), size)
            if dec.array is not None:
                idx.append(i)
                arrays.append(dec.array)
        if arrays:
            img[idx] = scorer.encode_images(np.stack(arrays)).cpu().numpy()
        bar.advance(min(n, start + BATCH) - start)
    txt = np.zeros((n, dim), dtype=np.float32)
    for start in range(0, n, BATCH):
        chunk = list(texts[start : start + BATCH])
        txt[start : start + len(chunk)] = scorer.encode_texts(chunk).cpu().numpy()
        bar.advance(len(chunk))
    return img, txt


def nearest(query: np.ndarray, pool: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Similarities and indices of the k nearest pool items of every query row (chunks of 1,024)."""
    if len(pool) == 0 or len(query) == 0:
        return np.zeros((len(query), 0), np.float32), np.zeros((len(query), 0), np.int64)
    k = min(k, len(pool))
    sims, idx = [], []
    for s in range(0, len(query), 1024):
        m = query[s : s + 1024] @ pool.T
        top = np.argpartition(-m, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(m, top, axis=1)
        order = np.argsort(-vals, axis=1)
        idx.append(np.take_along_axis(top, order, axis=1))
        sims.append(np.take_along_axis(vals, order, axis=1))
    return np.concatenate(sims), np.concatenate(idx)


def kmeans(x: np.ndarray, k: int, *, seed: int = 0, iters: int = 30) -> np.ndarray:
    """Cluster labels by spherical k-means (k-means++ seeding, cosine); deterministic for a seed."""
    n = len(x)
    k = max(1, min(k, n))
    rng = np.random.default_rng(seed)
    centres = [x[int(rng.integers(n))]]
    for _ in range(1, k):
        d = 1.0 - np.max(x @ np.stack(centres).T, axis=1)
        d = np.clip(d, 0, None) ** 2
        total = float(d.sum())
        centres.append(x[int(rng.choice(n, p=d / total))] if total > 0 else x[int(rng.integers(n))])
    c = np.stack(centres)
    labels = np.zeros(n, dtype=np.int64)
    for _ in range(iters):
        new = np.argmax(x @ c.T, axis=1)
        if _ and np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = x[labels == j]
            if len(members):
                m = members.mean(axis=0)
                c[j] = m / (np.linalg.norm(m) or 1.0)
    return labels
