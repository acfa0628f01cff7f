"""Caption corruptions with a kind name; each returns a caption that is false for the scene.

Each corruption edits one fact of one phrase and picks the replacement among values that
cannot make the phrase true (e.g. a colour that no object of that shape has), so the result
is wrong by construction; `caption_is_true` double-checks it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from vlcurate.synth.caption import Caption, caption_is_true, describe
from vlcurate.synth.layout import Layout, sample_layout
from vlcurate.synth.vocab import COLOUR_NAMES, MAX_COUNT, SHAPES

Corruption = Callable[[Caption, Layout, np.random.Generator], Caption]


def _pick(rng: np.random.Generator, options: list[str] | list[int]) -> int:
    return int(rng.integers(len(options)))


def _replace_phrase(caption: Caption, i: int, **changes: object) -> Caption:
    phrases = list(caption.phrases)
    phrases[i] = dataclasses.replace(phrases[i], **changes)  # type: ignore[arg-type]
    return dataclasses.replace(caption, phrases=tuple(phrases))


def wrong_colour(caption: Caption, layout: Layout, rng: np.random.Generator) -> Caption:
    """One phrase gets a colour that no object of its shape has in the scene."""
    i = int(rng.integers(len(caption.phrases)))
    shape = caption.phrases[i].shape
    present = {o.colour for o in layout.objects if o.shape == shape}
    options = [c for c in COLOUR_NAMES if c not in present]
    return _replace_phrase(caption, i, colour=options[_pick(rng, options)])


def wrong_shape(caption: Caption, layout: Layout, rng: np.random.Generator) -> Caption:
    """One phrase gets a shape that no object of its colour has in the scene."""
    i = int(rng.integers(len(caption.phrases)))
    colour = caption.phrases[i].colour
    present = {o.shape for o in layout.objects if o.colour == colour}
    options = [s for s in SHAPES if s not in present]
    return _replace_phrase(caption, i, shape=options[_pick(rng, options)])


def wrong_count(caption: Caption, layout: Layout, rng: np.random.Generator) -> Caption:
    """One phrase states a different number of objects than the scene has."""
    i = int(rng.integers(len(caption.phrases)))
    options = [c for c in range(1, MAX_COUNT + 1) if c != caption.phrases[i].count]
    return _replace_phrase(caption, i, count=options[_pick(rng, options)], numeral=False)


def unrelated(caption: Caption, layout: Layout, rng: np.random.Generator) -> Caption:
    """The caption of another, freshly sampled scene (resampled until it is false here)."""
    while True:
        other = describe(sample_layout(rng), rng)
        if not caption_is_true(layout, other) and other.text != caption.text:
            return other


CORRUPTIONS: dict[str, Corruption] = {
    "wrong_colour": wrong_colour,
    "wrong_count": wrong_count,
    "wrong_shape": wrong_shape,
    "unrelated": unrelated,
}
KINDS: tuple[str, ...] = tuple(CORRUPTIONS)


def corrupt(kind: str, caption: Caption, layout: Layout, rng: np.random.Generator) -> Caption:
    """Apply the corruption named `kind`; the result is guaranteed false for `layout`."""
    try:
        fn = CORRUPTIONS[kind]
    except KeyError:
        raise ValueError(f"unknown corruption {kind!r}; expected one of {', '.join(KINDS)}") from None
    out = fn(caption, layout, rng)
    if caption_is_true(layout, out):  # pragma: no cover - impossible by construction
        raise AssertionError(f"{kind} produced a true caption: {out.text!r}")
    return out
