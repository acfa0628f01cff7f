"""Question-answer pairs with short answers, computed from the layout (so they are true)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vlcurate.synth.caption import group_objects
from vlcurate.synth.layout import Layout
from vlcurate.synth.vocab import COLOUR_NAMES, PLURALS, SHAPES


@dataclass(frozen=True)
class QA:
    """One question with its short answer; `kind` is count, colour, shape or exists."""

    question: str
    answer: str
    kind: str


def _absent_pair(layout: Layout, rng: np.random.Generator) -> tuple[str, str]:
    present = {(o.colour, o.shape) for o in layout.objects}
    while True:
        pair = (COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))], SHAPES[int(rng.integers(len(SHAPES)))])
        if pair not in present:
            return pair


def make_qa(layout: Layout, rng: np.random.Generator) -> tuple[QA, ...]:
    """Counting, colour, shape and yes/no existence questions about this layout."""
    objs = layout.objects
    groups = group_objects(objs)
    keys = list(groups)
    out = [QA("How many objects are there?", str(len(objs)), "count")]
    colour, shape = keys[int(rng.integers(len(keys)))]
    out.append(QA(f"How many {colour} {PLURALS[shape]} are there?", str(len(groups[colour, shape])), "count"))
    a_colour, a_shape = _absent_pair(layout, rng)
    out.append(QA(f"How many {a_colour} {PLURALS[a_shape]} are there?", "0", "count"))
    out.append(QA(f"Is there a {colour} {shape}?", "yes", "exists"))
    out.append(QA(f"Is there a {a_colour} {a_shape}?", "no", "exists"))
    # "What colour is the star?" is only well posed when there is exactly one star.
    by_shape = [s for s in SHAPES if sum(o.shape == s for o in objs) == 1]
    if by_shape:
        s = by_shape[int(rng.integers(len(by_shape)))]
        out.append(QA(f"What colour is the {s}?", next(o.colour for o in objs if o.shape == s), "colour"))
    by_colour = [c for c in COLOUR_NAMES if sum(o.colour == c for o in objs) == 1]
    if by_colour:
        c = by_colour[int(rng.integers(len(by_colour)))]
        out.append(
            QA(f"What shape is the {c} object?", next(o.shape for o in objs if o.colour == c), "shape")
        )
    out.append(QA("What colour is the background?", layout.background, "colour"))
    return tuple(out)
