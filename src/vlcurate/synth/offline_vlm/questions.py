"""Recognise the synthetic world's question grammar (see `vlcurate.synth.qa`) in free text."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from vlcurate.synth.vocab import BACKGROUND_NAMES, COLOUR_NAMES, PLURALS, SHAPES

Form = Literal["count_all", "count", "exists", "colour_of", "shape_of", "background"]
KIND_OF: dict[str, str] = {
    "count_all": "count",
    "count": "count",
    "exists": "exists",
    "colour_of": "colour",
    "shape_of": "shape",
    "background": "colour",
}

_SING = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_C = "|".join(COLOUR_NAMES)
_S = "|".join(sorted(_SING, key=len, reverse=True))
_PATTERNS: list[tuple[Form, re.Pattern[str]]] = [
    ("count_all", re.compile(r"\bhow many (?:objects|shapes|things)\b")),
    ("count", re.compile(rf"\bhow many (?P<colour>{_C}) (?P<shape>{_S})\b")),
    ("exists", re.compile(rf"\b(?:is|are) there (?:a|an|any) (?P<colour>{_C}) (?P<shape>{_S})\b")),
    ("background", re.compile(r"\bwhat colou?r is the background\b")),
    ("colour_of", re.compile(rf"\bwhat colou?r is the (?:(?P<colour>{_C}) )?(?P<shape>{_S})\b")),
    ("shape_of", re.compile(rf"\bwhat shape is the (?P<colour>{_C}) (?:object|shape|thing|{_S})\b")),
]


@dataclass(frozen=True)
class Question:
    """A parsed scene question: its form, the colour/shape it names, and the answers it allows."""

    form: Form
    colour: str | None = None
    shape: str | None = None

    @property
    def kind(self) -> str:
        return KIND_OF[self.form]

    @property
    def options(self) -> tuple[str, ...]:
        if self.form in ("count_all", "count"):
            return ("0", "1", "2", "3", "4") if self.form == "count" else ("1", "2", "3", "4")
        if self.form == "exists":
            return ("yes", "no")
        if self.form == "colour_of":
            return COLOUR_NAMES
        if self.form == "background":
            return BACKGROUND_NAMES
        return SHAPES


def parse_question(text: str) -> Question | None:
    """The first synth question form found in `text` (case-insensitive), or None."""
    t = " ".join(text.lower().split())
    for form, pattern in _PATTERNS:
        m = pattern.search(t)
        if m:
            d = m.groupdict()
            shape = d.get("shape")
            return Question(form, d.get("colour"), _SING[shape] if shape else None)
    return None
