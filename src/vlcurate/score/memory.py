"""Score a small in-memory list of pairs: the path the platform's server (hidden checks) and the
agents (one work unit at a time) share, so both produce exactly what `vlcurate score` would."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from vlcurate.base.images import decode_image
from vlcurate.models.scorer import ClipScorer

_DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclass(frozen=True)
class PairScore:
    """One pair's outcome: a score when status is 'ok', else the reason it has none."""

    score: float | None
    status: str
    error: str | None = None
    width: int | None = None
    height: int | None = None


def score_pairs(
    scorer: ClipScorer,
    images: Sequence[bytes | None],
    captions: Sequence[str | None],
    *,
    batch_size: int = 64,
    fast_decode: bool = False,
) -> list[PairScore]:
    """Decode and score pairs in batches; a missing caption or unreadable image gets its status."""
    return score_and_embed(scorer, images, captions, batch_size=batch_size, fast_decode=fast_decode)[0]


def score_and_embed(
    scorer: ClipScorer,
    images: Sequence[bytes | None],
    captions: Sequence[str | None],
    *,
    batch_size: int = 64,
    fast_decode: bool = False,
) -> tuple[list[PairScore], np.ndarray, np.ndarray]:
    """`score_pairs` plus the normalised image and text embeddings (float32; NaN rows where unscored)."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    size = scorer.preprocessing.image_size
    out: list[PairScore | None] = [None] * len(images)
    dim = scorer.embed_dim
    image_emb = np.full((len(images), dim), np.nan, dtype=np.float32)
    text_emb = np.full((len(images), dim), np.nan, dtype=np.float32)
    state = {"batch_size": batch_size}

    def encode(batch: list[tuple[int, np.ndarray, str]]) -> None:
        """Run the model on `batch`; out of memory (CUDA or host) halves the batch and goes on."""
        if not batch:
            return
        try:
            img = scorer.encode_images(np.stack([a for _, a, _ in batch]))
            txt = scorer.encode_texts([c for _, _, c in batch])
        except (MemoryError, RuntimeError) as exc:
            if len(batch) == 1 or not _is_oom(exc):
                raise
            _release_cuda_cache()
            state["batch_size"] = min(state["batch_size"], max(1, len(batch) // 2))
            k = 0
            while k < len(batch):  # the size that fits now, which later failures may halve again
                step = state["batch_size"]
                encode(batch[k : k + step])
                k += step
            return
        scores = scorer.cosine(img, txt)
        rows = [i for i, _, _ in batch]
        image_emb[rows] = img.cpu().numpy()
        text_emb[rows] = txt.cpu().numpy()
        for i, s in zip(rows, scores, strict=True):
            prev = out[i]
            assert prev is not None
            out[i] = PairScore(float(np.clip(s, -1.0, 1.0)), "ok", None, prev.width, prev.height)

    # Decoding runs ahead in threads (simplejpeg and Pillow release the GIL) while the model works on
    # the batch before: decode and inference overlap.
    workers = min(_DECODE_THREADS, max(1, len(images) // 16))
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(decode_image, d, size, fast=fast_decode) for d in images]
        buf: list[tuple[int, np.ndarray, str]] = []
        for i, (fut, caption) in enumerate(zip(futures, captions, strict=True)):
            decoded = fut.result()
            if decoded.array is None:
                out[i] = PairScore(None, decoded.status, decoded.error, decoded.width, decoded.height)
            elif caption is None or not caption.strip():
                out[i] = PairScore(None, "missing_text", "no caption", decoded.width, decoded.height)
            else:
                buf.append((i, decoded.array, caption))
                out[i] = PairScore(None, "ok", None, decoded.width, decoded.height)
                if len(buf) >= state["batch_size"]:
                    encode(buf)
                    buf = []
        encode(buf)
    return [p for p in out if p is not None], image_emb, text_emb


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or "out of memory" in str(exc).lower()


def _release_cuda_cache() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
