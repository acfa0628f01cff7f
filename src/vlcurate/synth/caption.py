"""Templated captions as data: a caption is a list of phrases that can be checked against a layout.

Keeping the caption structured (count, colour, shape, optional size and position per phrase)
is what lets corruptions edit one fact and lets `caption_is_true` prove the edit made it false.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlcurate.synth.layout import Layout, ObjectSpec, object_positions
from vlcurate.synth.vocab import NUMBER_WORDS, PLURALS, POSITION_PHRASES

TEMPLATES: tuple[str, ...] = (
    "{objects}",
    "{objects} on a {background} background",
    "a picture of {objects}",
    "an image with {objects}",
)
_BACKGROUND_TEMPLATE = 1


@dataclass(frozen=True)
class Phrase:
    """'two small red circles on the left': exactly `count` objects of this colour and shape."""

    count: int
    colour: str
    shape: str
    size: str | None = None  # all of them have this size
    position: str | None = None  # all of them are in this region
    numeral: bool = False  # say "one" rather than "a"/"an" for a single object

    @property
    def text(self) -> str:
        words = [w for w in (self.size, self.colour) if w]
        noun = self.shape if self.count == 1 else PLURALS[self.shape]
        if self.count == 1 and not self.numeral:
            head = "an" if words[0][0] in "aeiou" else "a"
        else:
            head = NUMBER_WORDS[self.count]
        out = " ".join([head, *words, noun])
        if self.position:
            out += " " + POSITION_PHRASES[self.position]
        return out


@dataclass(frozen=True)
class Caption:
    """A caption: phrases joined as 'A, B and C' inside one of `TEMPLATES`."""

    phrases: tuple[Phrase, ...]
    template: int = 0
    background: str | None = None  # set exactly when the template names the background

    @property
    def text(self) -> str:
        parts = [p.text for p in self.phrases]
        objects = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        return TEMPLATES[self.template].format(objects=objects, background=self.background)


def group_objects(objects: tuple[ObjectSpec, ...]) -> dict[tuple[str, str], list[ObjectSpec]]:
    """Objects keyed by (colour, shape), in order of first appearance."""
    groups: dict[tuple[str, str], list[ObjectSpec]] = {}
    for obj in objects:
        groups.setdefault((obj.colour, obj.shape), []).append(obj)
    return groups


def _common_positions(objs: list[ObjectSpec]) -> list[str]:
    common = set(object_positions(objs[0]))
    for o in objs[1:]:
        common &= set(object_positions(o))
    return sorted(common)


def describe(layout: Layout, rng: np.random.Generator) -> Caption:
    """A true caption for `layout` that names every object (group order and wording vary)."""
    phrases = []
    for (colour, shape), objs in group_objects(layout.objects).items():
        sizes = {o.size for o in objs}
        size = objs[0].size if len(sizes) == 1 and rng.random() < 0.6 else None
        common = _common_positions(objs)
        position = common[int(rng.integers(len(common)))] if common and rng.random() < 0.5 else None
        numeral = len(objs) == 1 and rng.random() < 0.15
        phrases.append(Phrase(len(objs), colour, shape, size, position, numeral))
    order = rng.permutation(len(phrases))
    template = int(rng.choice(len(TEMPLATES), p=[0.4, 0.3, 0.15, 0.15]))
    background = layout.background if template == _BACKGROUND_TEMPLATE else None
    return Caption(tuple(phrases[int(i)] for i in order), template, background)


def phrase_is_true(layout: Layout, phrase: Phrase) -> bool:
    """Exactly `count` objects of that colour and shape, all with the stated size and position."""
    objs = [o for o in layout.objects if o.colour == phrase.colour and o.shape == phrase.shape]
    if len(objs) != phrase.count:
        return False
    if phrase.size is not None and any(o.size != phrase.size for o in objs):
        return False
    return phrase.position is None or all(phrase.position in object_positions(o) for o in objs)


def caption_is_true(layout: Layout, caption: Caption) -> bool:
    """Every phrase holds and the background (when named) is right."""
    if caption.background is not None and caption.background != layout.background:
        return False
    return all(phrase_is_true(layout, p) for p in caption.phrases)
