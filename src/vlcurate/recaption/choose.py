"""Choose the caption to keep: the best candidate, but only when it clearly beats the original.

Published evidence (CapsFusion, VeCLIP, Recap-DataComp) says synthetic captions help most next to
the original, not instead of it, and the scorer is noisy: a margin protects correct captions from
a candidate that is merely scored a hair higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlcurate.recaption.candidates import Candidate, Origin


@dataclass(frozen=True)
class Choice:
    text: str
    score: float
    origin: Origin
    why: str


def _label(c: Candidate) -> str:
    return (
        "sample" if c.origin == "sample" else ("fuse" if c.origin == "fuse" else f"rewrite round {c.round}")
    )


def best_candidate(candidates: list[Candidate]) -> Candidate | None:
    """The highest-scoring candidate with a finite score (the earliest on ties)."""
    scored = [c for c in candidates if math.isfinite(c.score)]
    return max(scored, key=lambda c: c.score) if scored else None


def choose(original: str, original_score: float, candidates: list[Candidate], margin: float) -> Choice:
    """Replace the original only when the best candidate beats its score by more than `margin`."""
    best = best_candidate(candidates)
    if best is None:
        return Choice(original, original_score, "original", "kept original: no scorable candidate")
    if not math.isfinite(original_score):
        return Choice(best.text, best.score, best.origin, f"{_label(best)}: original could not be scored")
    gain = best.score - original_score
    if best.text.strip().lower() == original.strip().lower():
        return Choice(
            original, original_score, "original", "kept original: the best candidate is the original"
        )
    if gain > margin:
        return Choice(best.text, best.score, best.origin, f"{_label(best)}: {gain:+.2f}")
    return Choice(
        original,
        original_score,
        "original",
        f"kept original: no candidate beat it by {margin:g} (best {gain:+.3f})",
    )
