"""Sample what is in a scene and where: shapes, colours, sizes and non-overlapping boxes.

Layout is separate from drawing so that a scene's description (e.g. for an `unrelated`
caption) can be sampled cheaply without rendering any pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlcurate.synth.vocab import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    IMAGE_SIZE,
    MAX_OBJECTS,
    SHAPES,
    SIZE_NAMES,
    SIZES,
)

_GAP = 1  # pixels kept free between boxes so masks never touch
_PLACE_TRIES = 60


@dataclass(frozen=True)
class ObjectSpec:
    """One object before drawing: what it is and the square it is drawn into (x, y, side)."""

    shape: str
    colour: str
    size: str
    x: int
    y: int

    @property
    def side(self) -> int:
        return SIZES[self.size]


@dataclass(frozen=True)
class Layout:
    """Everything needed to draw a scene, before any pixels exist."""

    background: str
    objects: tuple[ObjectSpec, ...]


def _overlaps(x: int, y: int, s: int, placed: list[tuple[int, int, int]]) -> bool:
    for px, py, ps in placed:
        if x < px + ps + _GAP and px < x + s + _GAP and y < py + ps + _GAP and py < y + s + _GAP:
            return True
    return False


def _place(sizes: list[int], rng: np.random.Generator) -> list[tuple[int, int]] | None:
    """Rejection-sample non-overlapping squares; None when this set of sizes did not fit."""
    placed: list[tuple[int, int, int]] = []
    for s in sizes:
        hi = IMAGE_SIZE - s + 1
        for _ in range(_PLACE_TRIES):
            x, y = (int(v) for v in rng.integers(0, hi, size=2))
            if not _overlaps(x, y, s, placed):
                placed.append((x, y, s))
                break
        else:
            return None
    return [(x, y) for x, y, _ in placed]


def sample_layout(rng: np.random.Generator, n_objects: int | None = None) -> Layout:
    """Draw a random layout: 1-4 objects (uniform count), a background and free positions."""
    background = BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]
    n = int(rng.integers(1, MAX_OBJECTS + 1)) if n_objects is None else n_objects
    if not 1 <= n <= MAX_OBJECTS:
        raise ValueError(f"n_objects must be in [1, {MAX_OBJECTS}], got {n}")
    while True:
        shapes = rng.integers(len(SHAPES), size=n)
        colours = rng.integers(len(COLOUR_NAMES), size=n)
        # Repeat an existing (colour, shape) now and then so that captions contain counts > 1.
        for i in range(1, n):
            if rng.random() < 0.35:
                j = int(rng.integers(i))
                shapes[i], colours[i] = shapes[j], colours[j]
        sizes = [SIZE_NAMES[int(v)] for v in rng.integers(len(SIZE_NAMES), size=n)]
        xy = _place([SIZES[s] for s in sizes], rng)
        if xy is None:
            continue  # too crowded: draw a new set of sizes
        objects = tuple(
            ObjectSpec(SHAPES[int(sh)], COLOUR_NAMES[int(co)], sz, x, y)
            for sh, co, sz, (x, y) in zip(shapes, colours, sizes, xy, strict=True)
        )
        return Layout(background=background, objects=objects)


# An object is "on the left" when its centre lies in the left part of the image, and so on;
# the middle band belongs to no region so that a position phrase is never a near miss.
_NEAR = IMAGE_SIZE * 3 / 8
_FAR = IMAGE_SIZE * 5 / 8


def object_positions(obj: ObjectSpec) -> tuple[str, ...]:
    """The regions (left/right/top/bottom) that clearly contain the object's centre."""
    cx, cy = obj.x + obj.side / 2, obj.y + obj.side / 2
    out = []
    if cx < _NEAR:
        out.append("left")
    elif cx > _FAR:
        out.append("right")
    if cy < _NEAR:
        out.append("top")
    elif cy > _FAR:
        out.append("bottom")
    return tuple(out)
