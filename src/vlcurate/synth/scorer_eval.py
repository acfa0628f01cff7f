"""Measure how well an image-text scorer separates true captions from corrupted ones.

Shared by the training script (its final report) and the quality test, so both measure the
same thing: ROC AUC of score(image, true caption) against score(image, corrupted caption).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from vlcurate.synth.corrupt import KINDS, corrupt
from vlcurate.synth.scene import scene_from_seed

# Pairs (images, texts) -> one similarity per pair.
PairScorer = Callable[[Sequence[Image.Image], Sequence[str]], np.ndarray]


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties counted half."""
    pos = np.asarray(positive, dtype=np.float64).ravel()
    neg = np.asarray(negative, dtype=np.float64).ravel()
    if pos.size == 0 or neg.size == 0:
        raise ValueError("roc_auc needs at least one positive and one negative score")
    scores = np.concatenate([pos, neg])
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(scores.size, dtype=np.float64)
    sorted_scores = scores[order]
    # Average ranks over ties.
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(avg, counts)
    u = ranks[: pos.size].sum() - pos.size * (pos.size + 1) / 2.0
    return float(u / (pos.size * neg.size))


@dataclass(frozen=True)
class EvalSet:
    """Fresh scenes with their true caption and one corrupted caption per kind."""

    images: list[Image.Image]
    true_texts: list[str]
    negatives: dict[str, list[str]]  # kind -> one caption per image


def make_eval_set(n: int, seed: int) -> EvalSet:
    """`n` scenes of stream `seed`, each with a caption corrupted by every kind."""
    images, texts = [], []
    negatives: dict[str, list[str]] = {k: [] for k in KINDS}
    for i in range(n):
        scene = scene_from_seed(seed, i)
        images.append(scene.image)
        texts.append(scene.caption_text)
        rng = np.random.default_rng([seed, i, 7])
        for kind in KINDS:
            negatives[kind].append(corrupt(kind, scene.caption, scene.layout, rng).text)
    return EvalSet(images, texts, negatives)


def evaluate(score_pairs: PairScorer, eval_set: EvalSet) -> dict[str, float]:
    """ROC AUC overall (all kinds pooled) and per corruption kind."""
    pos = np.asarray(score_pairs(eval_set.images, eval_set.true_texts))
    out: dict[str, float] = {}
    negs = []
    for kind, texts in eval_set.negatives.items():
        neg = np.asarray(score_pairs(eval_set.images, texts))
        negs.append(neg)
        out[kind] = roc_auc(pos, neg)
    out["overall"] = roc_auc(pos, np.concatenate(negs))
    return out
