"""Score many captions against one image each, decoding and encoding every image only once.

Recaptioning scores the original plus a dozen candidates per pair, so the image embedding is
computed once per pair and every text is scored against it in batches (same decode and model
as `vlcurate score`, so a score here equals the score `vlcurate score` gives that caption).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vlcurate.base.images import decode_image
from vlcurate.models.scorer import ClipScorer


@dataclass(frozen=True)
class ImageEmbeddings:
    """Normalised image embeddings (NaN rows where decoding failed) with each image's status."""

    emb: np.ndarray
    status: list[str]
    error: list[str | None]

    def ok(self, i: int) -> bool:
        return self.status[i] == "ok"


class CaptionScorer:
    """A loaded CLIP-style scorer: embed images once, then score any texts against them."""

    def __init__(self, scorer: ClipScorer, batch_size: int = 256) -> None:
        self.scorer = scorer
        self.batch_size = batch_size
        self.size = scorer.preprocessing.image_size

    def embed_images(self, images: Sequence[bytes | None]) -> ImageEmbeddings:
        n = len(images)
        emb = np.full((n, self.scorer.embed_dim), np.nan, dtype=np.float32)
        with ThreadPoolExecutor(max(1, min(4, n // 16))) as pool:
            decoded = list(pool.map(lambda d: decode_image(d, self.size), images))
        good = [i for i, d in enumerate(decoded) if d.array is not None]
        for start in range(0, len(good), self.batch_size):
            rows = good[start : start + self.batch_size]
            arr = np.stack([decoded[i].array for i in rows])  # type: ignore[misc]
            emb[rows] = self.scorer.encode_images(arr).cpu().numpy()
        return ImageEmbeddings(emb, [d.status for d in decoded], [d.error for d in decoded])

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.scorer.embed_dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            chunk = list(texts[start : start + self.batch_size])
            out[start : start + len(chunk)] = self.scorer.encode_texts(chunk).cpu().numpy()
        return out

    def score(self, image_emb: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """Cosine of row i of `image_emb` with texts[i]: float32 in [-1, 1] (NaN for an empty text)."""
        if len(texts) == 0:
            return np.zeros(0, dtype=np.float32)
        if image_emb.shape[0] != len(texts):
            raise ValueError(f"{image_emb.shape[0]} image rows but {len(texts)} texts")
        txt = self.embed_texts([t or "" for t in texts])
        s = np.clip((image_emb * txt).sum(axis=1), -1.0, 1.0).astype(np.float32)
        s[[not (t or "").strip() for t in texts]] = np.nan
        return s
