"""Which things a text names, and which of them the image supports (leave-one-out with the scorer).

A mention extractor turns a caption or answer into the object phrases it names. `synth` reads
the synthetic world's vocabulary; any other vocabulary plugs in by name (`register_extractor`) or
as `package.module:function` (a callable `str -> list[str]`), so a real-world noun list can follow.

Support is judged the way the tiny model judges best, by comparing whole texts: drop one mention
from the list; if the image-text score rises by more than `tau`, the image does not support it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np

from vlcurate.recaption.scoring import CaptionScorer

MentionExtractor = Callable[[str], list[str]]
# What a text with its only mention removed is compared as: says nothing about the image.
NEUTRAL_TEXT = "a picture"


# Extractors by name, as `module:function` imported on first use: `synth`, the synthetic world's
# vocabulary, is a plugin like any other (the world is not imported by this layer).
_BUILTIN = {"synth": "vlcurate.synth.parse:mentioned_texts"}
_EXTRACTORS: dict[str, MentionExtractor] = {}


def register_extractor(name: str, fn: MentionExtractor) -> None:
    """Make a vocabulary available by name (e.g. to recipes: `mentions: coco`)."""
    _EXTRACTORS[name] = fn


def get_extractor(name: str) -> MentionExtractor:
    """A registered extractor, or `module:function` imported on demand; ValueError when neither."""
    if name in _EXTRACTORS:
        return _EXTRACTORS[name]
    name = _BUILTIN.get(name, name)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"cannot load mention extractor {name!r}: {exc}") from None
        if not callable(fn):
            raise ValueError(f"mention extractor {name!r} is not callable")
        return fn
    known = ", ".join(sorted({*_EXTRACTORS, *_BUILTIN}))
    raise ValueError(f"unknown mention extractor {name!r}; expected one of {known} or module:function")


def join_mentions(mentions: Sequence[str]) -> str:
    """'A', 'A and B', 'A, B and C' (the synthetic captions' own list form); NEUTRAL_TEXT when empty."""
    items = [m for m in mentions if m]
    if not items:
        return NEUTRAL_TEXT
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def leave_one_out(
    scorer: CaptionScorer, image_emb: np.ndarray, mentions: Sequence[Sequence[str]]
) -> list[np.ndarray]:
    """For each text's mentions: score(without mention j) - score(all mentions), batched over texts.

    `image_emb` has one row per text. A positive delta means the text fits the image better
    without that mention.
    """
    rows: list[int] = []
    texts: list[str] = []
    for i, ms in enumerate(mentions):
        if not ms:
            continue
        rows.append(i)
        texts.append(join_mentions(ms))
        for j in range(len(ms)):
            rows.append(i)
            texts.append(join_mentions([m for k, m in enumerate(ms) if k != j]))
    scores = scorer.score(image_emb[rows], texts) if texts else np.zeros(0, dtype=np.float32)
    out: list[np.ndarray] = []
    at = 0
    for ms in mentions:
        if not ms:
            out.append(np.zeros(0, dtype=np.float32))
            continue
        full = scores[at]
        out.append((scores[at + 1 : at + 1 + len(ms)] - full).astype(np.float32))
        at += 1 + len(ms)
    return out


def unsupported_mentions(
    scorer: CaptionScorer, image_emb: np.ndarray, mentions: Sequence[Sequence[str]], tau: float
) -> list[list[str]]:
    """Per text, the mentions the image does not support, worst first.

    Greedy: drop the mention whose removal raises the score most while that rise exceeds `tau`,
    then judge the rest again without it, so one hallucinated object does not make its true
    neighbours look unsupported too.
    """
    left = [list(ms) for ms in mentions]
    bad: list[list[str]] = [[] for _ in mentions]
    active = [i for i, ms in enumerate(left) if ms]
    while active:
        deltas = leave_one_out(scorer, image_emb[active], [left[i] for i in active])
        still = []
        for i, d in zip(active, deltas, strict=True):
            j = int(np.argmax(d))
            if d[j] > tau:
                bad[i].append(left[i].pop(j))
                if left[i]:
                    still.append(i)
        active = still
    return bad
