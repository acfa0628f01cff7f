"""Text-only tasks of the offline VLM: answering from a description, and judging an answer.

Both read words, never pixels, so they need no image and no model call: a description is parsed
back into object phrases (`synth.parse`) and the scene question is answered by counting them;
a judge compares a model's answer with the reference the way a careful grader would (case,
articles, punctuation and number words ignored; a short sentence that states the reference
counts). This is what lets perception-vs-reasoning diagnosis and `vlcurate eval --judge` run
offline.
"""

from __future__ import annotations

import re

from vlcurate.synth.offline_vlm.questions import Question, parse_question
from vlcurate.synth.offline_vlm.weakness import Weaknesses
from vlcurate.synth.parse import mentioned_background, mentioned_phrases
from vlcurate.vlm import prompts as vp

CANNOT_TELL_FROM_TEXT = "I cannot tell from the description."
_NUMBER = re.compile(r"\b(\d+|zero|none|one|two|three|four|five)\b", re.IGNORECASE)


def _from_phrases(q: Question, description: str) -> str | None:
    phrases = mentioned_phrases(description)
    if q.form == "count_all":
        return str(sum(p.count for p in phrases)) if phrases else None
    if q.form == "background":
        return mentioned_background(description)
    if q.form in ("count", "exists"):
        n = sum(p.count for p in phrases if (p.colour, p.shape) == (q.colour, q.shape))
        return str(n) if q.form == "count" else ("yes" if n else "no")
    if q.form == "colour_of":
        found = [
            p.colour for p in phrases if p.shape == q.shape and (q.colour is None or p.colour == q.colour)
        ]
        return found[0] if found else None
    found = [p.shape for p in phrases if p.colour == q.colour]
    return found[0] if found else None


def answer_from_description(
    description: str, question: str, choices: list[str] | None = None, weakness: Weaknesses | None = None
) -> str:
    """The answer a reader of `description` gives (an option letter when `choices` are given)."""
    q = parse_question(question)
    if q is None:
        return CANNOT_TELL_FROM_TEXT
    if weakness is not None:
        o = weakness.behaviour(q)  # refusing or garbling is behaviour, not perception
        if o is not None and o.text is not None:
            return o.text
    ans = _from_phrases(q, description)
    if ans is None:
        return CANNOT_TELL_FROM_TEXT
    if not choices:
        return ans
    norm = [vp.normalize_answer(c) for c in choices]
    return "ABCDEFGHIJ"[norm.index(ans)] if ans in norm else CANNOT_TELL_FROM_TEXT


def _number(text: str) -> str | None:
    m = _NUMBER.search(text)
    return vp.normalize_answer(m.group(1)) if m else None


def judge(question: str, reference: str, answer: str) -> tuple[bool, str]:
    """(correct, reason): does `answer` state `reference`?"""
    ref, ans = vp.normalize_answer(reference), vp.normalize_answer(answer)
    if not ans:
        return False, "the answer is empty"
    if vp.is_refusal(answer):
        return False, "the answer is a refusal"
    if ref == ans:
        return True, "the answer equals the reference"
    if ref.isdigit():
        got = _number(answer)
        return (
            (got == ref, f"the answer's number is {got}, the reference is {ref}")
            if got
            else (
                False,
                "the answer names no number",
            )
        )
    words = re.findall(r"[a-z0-9]+", answer.lower())
    if len(words) <= 12 and ref in words:
        others = {"yes", "no"} - {ref} if ref in ("yes", "no") else set()
        if not others & set(words):
            return True, f"the answer states {ref!r}"
    return False, f"the answer does not state {ref!r}"
