"""Read free text in the synthetic world's vocabulary back into `Caption` / `Phrase` structures.

`parse_caption` is the exact inverse of `Caption.text` (so a caption that went through a model or a
file comes back checkable with `caption_is_true`); `mentioned_phrases` is the tolerant reader that
finds every object mention inside any sentence, which the hallucination filter and the recaption
evaluation use on model output that follows no template.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vlcurate.synth.caption import TEMPLATES, Caption, Phrase
from vlcurate.synth.vocab import (
    BACKGROUND_NAMES,
    COLOUR_NAMES,
    NUMBER_WORDS,
    PLURALS,
    POSITION_PHRASES,
    SHAPES,
    SIZE_NAMES,
)

_SINGULAR = {**{s: s for s in SHAPES}, **{p: s for s, p in PLURALS.items()}}
_COUNTS = {"a": 1, "an": 1, **{w: n for n, w in NUMBER_WORDS.items()}, **{str(n): n for n in NUMBER_WORDS}}
_POSITION_OF = {v: k for k, v in POSITION_PHRASES.items()}


def _alt(words: Iterable[object]) -> str:
    """A regex alternation of the words, longest first (so 'circles' wins over 'circle')."""
    return "|".join(re.escape(w) for w in sorted((str(w) for w in words), key=len, reverse=True))


_PHRASE = (
    rf"(?P<count>{_alt(_COUNTS)})\s+(?:(?P<size>{_alt(SIZE_NAMES)})\s+)?(?P<colour>{_alt(COLOUR_NAMES)})"
    rf"\s+(?P<shape>{_alt(_SINGULAR)})(?:\s+(?P<position>{_alt(_POSITION_OF)}))?"
)
_PHRASE_FULL = re.compile(rf"^{_PHRASE}$")
_PHRASE_ANY = re.compile(rf"\b{_PHRASE}\b", re.IGNORECASE)
_BACKGROUND_SUFFIX = re.compile(
    rf"^(?P<objects>.+) on a (?P<background>{_alt(BACKGROUND_NAMES)}) background$"
)
_PREFIX_TEMPLATES = {
    TEMPLATES[t].split("{objects}")[0]: t for t in range(len(TEMPLATES)) if TEMPLATES[t].endswith("{objects}")
}


def _phrase(m: re.Match[str], *, strict: bool) -> Phrase | None:
    word = m.group("count").lower()
    count = _COUNTS[word]
    noun = m.group("shape").lower()
    plural = noun != _SINGULAR[noun]
    if strict and plural != (count > 1):
        return None
    if strict and word in ("a", "an"):
        first = (m.group("size") or m.group("colour")).lower()
        if word != ("an" if first[0] in "aeiou" else "a"):
            return None
    position = m.group("position")
    size = m.group("size")
    return Phrase(
        count=count,
        colour=m.group("colour").lower(),
        shape=_SINGULAR[noun],
        size=size.lower() if size else None,
        position=_POSITION_OF[position.lower()] if position else None,
        numeral=count == 1 and word == "one",
    )


def _split_objects(objects: str) -> list[str] | None:
    """'A, B and C' -> [A, B, C]; None when the list punctuation is not the template's."""
    head, sep, last = objects.rpartition(" and ")
    if not sep:
        return [objects]
    parts = head.split(", ")
    return [*parts, last]


def _parse_objects(objects: str) -> tuple[Phrase, ...] | None:
    parts = _split_objects(objects)
    if not parts:
        return None
    phrases = []
    for part in parts:
        m = _PHRASE_FULL.match(part)
        p = _phrase(m, strict=True) if m else None
        if p is None:
            return None
        phrases.append(p)
    return tuple(phrases)


def parse_caption(text: str) -> Caption | None:
    """The `Caption` whose `.text` is `text` (case and a final full stop ignored), or None."""
    t = " ".join((text or "").strip().rstrip(".").split()).lower()
    if not t:
        return None
    m = _BACKGROUND_SUFFIX.match(t)
    if m:
        phrases = _parse_objects(m.group("objects"))
        if phrases is not None:
            return Caption(
                phrases, TEMPLATES.index("{objects} on a {background} background"), m.group("background")
            )
    for prefix, template in sorted(_PREFIX_TEMPLATES.items(), key=lambda kv: -len(kv[0])):
        if t.startswith(prefix):
            phrases = _parse_objects(t[len(prefix) :])
            if phrases is not None:
                return Caption(phrases, template)
    return None


def mentioned_phrases(text: str) -> list[Phrase]:
    """Every '<count> [size] <colour> <shape(s)> [position]' mention in `text`, in order.

    Tolerant: any surrounding sentence, any case, digits for counts, and singular/plural
    agreement not enforced (the number word decides the count).
    """
    out = []
    for m in _PHRASE_ANY.finditer(text or ""):
        p = _phrase(m, strict=False)
        if p is not None:
            out.append(p)
    return out


def mentioned_background(text: str) -> str | None:
    """The background colour named by '... on a <colour> background' (or 'the background is X')."""
    m = re.search(rf"\b({_alt(BACKGROUND_NAMES)}) background\b", text or "", re.IGNORECASE)
    if m:
        return m.group(1).lower()
    m = re.search(rf"\bbackground is ({_alt(BACKGROUND_NAMES)})\b", text or "", re.IGNORECASE)
    return m.group(1).lower() if m else None


def mentioned_texts(text: str) -> list[str]:
    """The object phrases a text names, as strings: the `synth` mention extractor of `recaption`."""
    return [p.text for p in mentioned_phrases(text)]
