"""Reading the answer out of a model's reply, and scoring it against the reference, per question type.

- `mc`: the option letter ("B", "(B)", "B. red", "The answer is B", a final "Answer: B" line) or the
  text of exactly one option ("red"); a letter past the last option is unparsed, not wrong.
- `yesno`: the first yes/no (true/false) word.
- `short`: numbers when the reference is a number (digits or number words up to twenty, so "three
  red circles" scores as 3); otherwise the normalised reply (case, punctuation, articles, grey/gray)
  equals the reference, or a short reply (<= 12 words) states it as a whole phrase; a reply of more
  than 8 words that does not is `unparsed` (no short answer in it), a shorter one is wrong. A list
  of references (VQA style) accepts any of them.
- `caption`: token F1 (bag of lower-case words without articles and fillers, best over the
  references; CIDEr-free, no model), correct when >= `caption_threshold` (0.5 by default).

Empty replies are `no_answer`, refusals `refused`, replies without a readable answer `unparsed`;
all three count as wrong (the model's failure), while `missing_answer` items are not scored.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from vlcurate.vlm import prompts as vp

LETTERS = "ABCDEFGHIJ"
NUMBER_WORDS: dict[str, int] = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
NUMBER_WORDS["none"] = 0
NUMBER_WORDS["no"] = 0  # "no red circles" -- only used when the reference is a number
MAX_SHORT_WORDS = 8  # a longer short-answer reply that does not state the reference is unparsed
SYNONYMS = {"grey": "gray", "colour": "color", "true": "yes", "false": "no"}
_NUMBER = re.compile(r"(?<![\w.])(-?\d+(?:\.\d+)?|" + "|".join(NUMBER_WORDS) + r")(?![\w])", re.IGNORECASE)
_ONLY_LETTER = re.compile(r"^\(?([A-J])\)?[.:)]?$")
_LEAD_LETTER = re.compile(r"^\(?([A-J])[.:)]\s")
_SAID_LETTER = re.compile(
    r"\b(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*\(?([A-J])\)?(?![\w])", re.IGNORECASE
)
_YESNO = re.compile(r"\b(yes|no|true|false)\b", re.IGNORECASE)
_TOKEN = re.compile(r"[a-z0-9]+")
_FILLER = frozenset(
    [
        "a",
        "an",
        "the",
        "of",
        "on",
        "in",
        "and",
        "with",
        "there",
        "is",
        "are",
        "image",
        "picture",
        "photo",
        "this",
    ]
)


@dataclass(frozen=True)
class Scored:
    """The verdict on one reply: status, what was read out, correct (None: not scored), caption score."""

    status: str
    extracted: str | None
    correct: bool | None
    score: float | None = None
    error: str | None = None


def normalize(text: str | None) -> str:
    """`vlm.prompts.normalize_answer` plus spelling synonyms (grey -> gray)."""
    t = vp.normalize_answer(text)
    t = " ".join(SYNONYMS.get(w, w) for w in t.split())
    return t


def final_text(response: str) -> str:
    """The part of a reply that holds the answer: the last `Answer: X` line when there is one."""
    return vp.final_answer(response) or response.strip()


def as_number(text: str) -> float | None:
    """The number a short reference names ("3", "three"), or None."""
    t = normalize(text)
    if t in NUMBER_WORDS and t != "no":
        return float(NUMBER_WORDS[t])
    try:
        return float(t)
    except ValueError:
        return None


def first_number(text: str) -> float | None:
    """The first number in a reply; a bare "no"/"none" counts as 0 only when no other number is named
    ("No, there are 3" is 3)."""
    found = [m.group(1).lower() for m in _NUMBER.finditer(text)]
    if not found:
        return None
    word = next((w for w in found if w not in ("no", "none")), found[0])
    return float(NUMBER_WORDS[word]) if word in NUMBER_WORDS else float(word)


def reference_letter(answer: str, choices: list[str]) -> str | None:
    """The reference as an option letter: the letter itself, or the option whose text it is."""
    a = answer.strip()
    if len(a) == 1 and a.upper() in LETTERS[: len(choices)]:
        return a.upper()
    m = _ONLY_LETTER.match(a) or _LEAD_LETTER.match(a + " ")
    if m and m.group(1) in LETTERS[: len(choices)]:
        return m.group(1)
    norm = [normalize(c) for c in choices]
    na = normalize(a)
    return LETTERS[norm.index(na)] if na in norm else None


def extract_letter(response: str, choices: list[str]) -> str | None:
    """The option a reply picks, or None (no option, or a letter past the last option)."""
    text = final_text(response)
    valid = LETTERS[: len(choices)]
    for pattern in (_ONLY_LETTER, _LEAD_LETTER, _SAID_LETTER):
        m = pattern.search(text.strip() + (" " if pattern is _LEAD_LETTER else ""))
        if m:
            letter = m.group(1).upper()
            return letter if letter in valid else None
    norm = [normalize(c) for c in choices]
    t = normalize(text)
    if t in norm:
        return valid[norm.index(t)]
    words = f" {' '.join(_TOKEN.findall(text.lower()))} "
    named = [i for i, c in enumerate(norm) if c and f" {' '.join(_TOKEN.findall(c))} " in words]
    return valid[named[0]] if len(named) == 1 else None


def extract_yesno(response: str) -> str | None:
    m = _YESNO.search(final_text(response))
    return SYNONYMS.get(m.group(1).lower(), m.group(1).lower()) if m else None


def tokens(text: str) -> list[str]:
    return [SYNONYMS.get(t, t) for t in _TOKEN.findall(text.lower()) if t not in _FILLER]


def token_f1(candidate: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 between a caption and one reference."""
    c, r = Counter(tokens(candidate)), Counter(tokens(reference))
    overlap = sum((c & r).values())
    if not overlap:
        return 0.0
    p, q = overlap / sum(c.values()), overlap / sum(r.values())
    return 2 * p * q / (p + q)


def _short(response: str, references: list[str]) -> Scored:
    text = final_text(response)
    numbers = [n for n in (as_number(r) for r in references) if n is not None]
    if numbers and len(numbers) == len(references):
        got = first_number(text)
        if got is None:
            return Scored("unparsed", None, False, error="the reply names no number")
        shown = str(int(got)) if got == int(got) else str(got)
        return Scored("ok", shown, got in numbers)
    t = normalize(text)
    refs = [normalize(r) for r in references]
    if t in refs:
        return Scored("ok", t, True)
    words = _TOKEN.findall(t)
    if len(words) <= 12:
        padded = f" {' '.join(words)} "
        for r in refs:
            if r and f" {' '.join(_TOKEN.findall(r))} " in padded:
                return Scored("ok", r, True)
    if len(words) > MAX_SHORT_WORDS:
        return Scored("unparsed", None, False, error=f"no short answer in a reply of {len(words)} words")
    return Scored("ok", t, False)


def score_reply(
    type_: str,
    response: str | None,
    references: list[str],
    choices: list[str] | None = None,
    *,
    caption_threshold: float = 0.5,
) -> Scored:
    """Read the answer out of `response` and score it against `references` (non-empty)."""
    if response is None or not response.strip():
        return Scored("no_answer", None, False, error="the model returned an empty answer")
    if type_ == "caption":
        f1 = max(token_f1(response, r) for r in references)
        return Scored("ok", response.strip(), f1 >= caption_threshold, round(f1, 4))
    if vp.is_refusal(response):
        return Scored("refused", None, False, error="the model refused")
    if type_ == "mc":
        opts = choices or []
        ref = reference_letter(references[0], opts)
        if ref is None:
            return Scored(
                "missing_answer", None, None, error=f"answer {references[0]!r} is not one of the choices"
            )
        got = extract_letter(response, opts)
        if got is None:
            return Scored("unparsed", None, False, error="no option letter or option text in the reply")
        return Scored("ok", got, got == ref)
    if type_ == "yesno":
        got = extract_yesno(response)
        if got is None:
            return Scored("unparsed", None, False, error="no yes/no in the reply")
        return Scored("ok", got, got in {normalize(r) for r in references})
    return _short(response, references)
