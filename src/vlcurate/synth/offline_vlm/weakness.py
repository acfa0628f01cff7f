"""Planted weaknesses of the offline VLM, and the memory that cures them (`vlcurate vlm serve --weakness`).

A weakened server answers wrongly, or refuses, exactly on the questions its weakness names, so a
diagnosis has something known to find:

    blind-colour=X        cannot see colour X: "is there an X circle?" -> no, "how many X stars?" -> 0,
                          "what colour is the star?" never X, "what shape is the X object?" wrong,
                          and X objects are left out of captions and descriptions
    confuse-shapes=A:B    sees A as B and B as A: shape answers swapped, questions naming A answered
                          as if they named B (and back), captions swap the two words
    refuse=KIND           refuses every question of kind count, exists, colour or shape
    garble=KIND           answers every question of that kind with text that holds no answer

Several are given comma separated (`blind-colour=red,refuse=count`). Reasoning from a given
description (text only) is not affected by the perception weaknesses (blind, confuse), only by the
behavioural ones (refuse, garble): that difference is what perception-vs-reasoning diagnosis reads.

A weakness is cured per item when the server's memory (`memory.Memory`, from `--memory` or
`POST /admin/memory`) holds at least `min_samples` training samples about the item's attribute
(`colour=X` for blind-colour; `shape=A` or `shape=B`, whichever the item is about, for
confuse-shapes; `kind=KIND` for refuse and garble). Data about other attributes cures nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from vlcurate.synth.caption import Phrase
from vlcurate.synth.offline_vlm.memory import Attribute, Memory, load_memory
from vlcurate.synth.offline_vlm.questions import KIND_OF, Question
from vlcurate.synth.vocab import COLOUR_NAMES, SHAPES

WEAKNESS_KINDS: tuple[str, ...] = ("blind-colour", "confuse-shapes", "refuse", "garble")
QUESTION_KINDS: tuple[str, ...] = tuple(sorted(set(KIND_OF.values())))
REFUSAL = "I'm sorry, but I can't help with that."
GARBLE = "Well, that depends on how you look at it; it is hard to put into words."
DEFAULT_MIN_SAMPLES = 20

Ranked = list[tuple[str, float]]


@dataclass(frozen=True)
class Weakness:
    """One planted weakness: `kind` is one of WEAKNESS_KINDS, `value` its argument."""

    kind: str
    value: str

    @property
    def spec(self) -> str:
        return f"{self.kind}={self.value}"

    def shapes(self) -> tuple[str, str]:
        a, _, b = self.value.partition(":")
        return a, b


def parse_weaknesses(spec: str) -> tuple[Weakness, ...]:
    """'blind-colour=red,confuse-shapes=circle:square,refuse=count' -> weaknesses.

    A bad part raises ValueError naming it."""
    out: list[Weakness] = []
    for item in (spec or "").split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, value = (s.strip().lower() for s in item.partition("="))
        if not sep or kind not in WEAKNESS_KINDS:
            raise ValueError(
                f"bad weakness {item!r}: expected KIND=VALUE with KIND one of {', '.join(WEAKNESS_KINDS)}"
            )
        if kind == "blind-colour" and value not in COLOUR_NAMES:
            raise ValueError(f"bad weakness {item!r}: colour must be one of {', '.join(COLOUR_NAMES)}")
        if kind == "confuse-shapes":
            a, colon, b = value.partition(":")
            if not colon or a not in SHAPES or b not in SHAPES or a == b:
                raise ValueError(
                    f"bad weakness {item!r}: expected two different shapes A:B of {', '.join(SHAPES)}"
                )
        if kind in ("refuse", "garble") and value not in QUESTION_KINDS:
            raise ValueError(
                f"bad weakness {item!r}: question kind must be one of {', '.join(QUESTION_KINDS)}"
            )
        out.append(Weakness(kind, value))
    return tuple(out)


@dataclass(frozen=True)
class Override:
    """What a weakness makes of an answer: another option, or a reply that is no option at all."""

    weakness: Weakness
    attribute: Attribute
    option: str | None = None
    text: str | None = None


class Weaknesses:
    """The server's weaknesses and its memory; thread-safe to reload while answering."""

    def __init__(
        self,
        weaknesses: Sequence[Weakness],
        *,
        min_samples: int = DEFAULT_MIN_SAMPLES,
        memory: Memory | None = None,
    ) -> None:
        self.weaknesses = tuple(weaknesses)
        self.min_samples = min_samples
        self._memory = memory or Memory()
        self._lock = threading.Lock()

    @property
    def memory(self) -> Memory:
        with self._lock:
            return self._memory

    def load(self, path: str | Path) -> Memory:
        """Replace the memory with the samples under `path` (raises `MemoryLoadError` when unreadable)."""
        mem = load_memory(path)
        with self._lock:
            self._memory = mem
        return mem

    def cured(self, attribute: Attribute) -> bool:
        return self.memory.count(attribute) >= self.min_samples

    def status(self) -> dict[str, object]:
        """Each weakness with whether memory cures it (for /health and /admin/memory)."""
        rows: list[dict[str, object]] = []
        for w in self.weaknesses:
            attrs = _attributes_of(w)
            rows.append(
                {
                    "weakness": w.spec,
                    "attributes": {f"{k}={v}": self.memory.count((k, v)) for k, v in attrs},
                    "cured": [f"{k}={v}" for k, v in attrs if self.cured((k, v))],
                }
            )
        return {"min_samples": self.min_samples, "weaknesses": rows, "memory": self.memory.to_json()}

    # ---- answers -----------------------------------------------------------------------------
    def behaviour(self, q: Question) -> Override | None:
        """Refusal or garble for this question's kind (applies with or without an image)."""
        for w in self.weaknesses:
            if w.kind in ("refuse", "garble") and q.kind == w.value and not self.cured(("kind", w.value)):
                return Override(w, ("kind", w.value), text=REFUSAL if w.kind == "refuse" else GARBLE)
        return None

    def adjust(
        self, q: Question, chosen: str, ranked: Ranked, rerank: Callable[[Question], Ranked]
    ) -> Override | None:
        """What the weakened model answers instead of `chosen` (None: the honest answer stands)."""
        found = self.behaviour(q)
        if found is not None:
            return found
        for w in self.weaknesses:
            o = self._perceive(w, q, chosen, ranked, rerank)
            if o is not None and not self.cured(o.attribute):
                return o
        return None

    def _perceive(
        self, w: Weakness, q: Question, chosen: str, ranked: Ranked, rerank: Callable[[Question], Ranked]
    ) -> Override | None:
        if w.kind == "blind-colour":
            x = w.value
            if q.form in ("count", "exists") and q.colour == x:
                return Override(w, ("colour", x), option="0" if q.form == "count" else "no")
            if q.form == "shape_of" and q.colour == x:
                return Override(w, ("colour", x), option=_runner_up(ranked, chosen))
            if q.form == "colour_of" and chosen == x:
                return Override(w, ("colour", x), option=_runner_up(ranked, x))
            return None
        if w.kind == "confuse-shapes":
            a, b = w.shapes()
            swap = {a: b, b: a}
            if q.form == "shape_of" and chosen in swap:
                return Override(w, ("shape", chosen), option=swap[chosen])
            if q.form in ("count", "exists", "colour_of") and q.shape in swap:
                other = rerank(Question(q.form, q.colour, swap[q.shape]))
                return Override(w, ("shape", q.shape), option=other[0][0])
        return None

    # ---- captions ----------------------------------------------------------------------------
    def seen(self, phrases: tuple[Phrase, ...]) -> tuple[Phrase, ...]:
        """The phrases a weakened model reports: blind colours dropped (possibly all), confused shapes
        swapped."""
        out = list(phrases)
        for w in self.weaknesses:
            if w.kind == "blind-colour" and not self.cured(("colour", w.value)):
                out = [p for p in out if p.colour != w.value]  # may leave nothing: an empty scene
            elif w.kind == "confuse-shapes":
                a, b = w.shapes()
                swap = {a: b, b: a}
                out = [
                    Phrase(p.count, p.colour, swap[p.shape], p.size, p.position, p.numeral)
                    if p.shape in swap and not self.cured(("shape", p.shape))
                    else p
                    for p in out
                ]
        return tuple(out)


def _runner_up(ranked: Ranked, avoid: str) -> str:
    for option, _ in ranked:
        if option != avoid:
            return option
    return avoid  # pragma: no cover - every form has at least two options


def _attributes_of(w: Weakness) -> list[Attribute]:
    if w.kind == "blind-colour":
        return [("colour", w.value)]
    if w.kind == "confuse-shapes":
        a, b = w.shapes()
        return [("shape", a), ("shape", b)]
    return [("kind", w.value)]
