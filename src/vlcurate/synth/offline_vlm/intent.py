"""What the last user message asks for, read with the fixed prompts of `vlm_prompts`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal

from vlcurate.vlm import prompts as vp

Task = Literal["caption", "rewrite", "fuse", "cot", "answer", "describe", "from_description", "judge"]
_STYLE = re.compile(r"\bStyle:\s*(short|detailed)\b", re.IGNORECASE)
_MAX_WORDS = re.compile(r"\bat most (\d+) words\b", re.IGNORECASE)
_FEEDBACK = re.compile(r"^Feedback:\s*(.*)$", re.MULTILINE)
_QUESTION = re.compile(r"^Question:\s*(.*)$", re.MULTILINE)
_SHORT = re.compile(r"^Short answer:\s*(.*)$", re.MULTILINE)
_DESCRIPTION = re.compile(r'^Description:\s*"(.*)"\s*$', re.MULTILINE)
_REFERENCE = re.compile(r"^Reference:\s*(.*)$", re.MULTILINE)
_ANSWER = re.compile(r"^Answer:\s*(.*)$", re.MULTILINE)
_CHOICE = re.compile(r"^([A-J])\.\s+(.+?)\s*$")
_LETTER_SUFFIX = "Answer with the option's letter."


@dataclass(frozen=True)
class Intent:
    """The task and its fields; anything unrecognised is a `generic` caption request."""

    task: Task
    style: str = "short"
    max_words: int | None = None
    caption: str = ""
    feedback: str = ""
    original: str = ""
    candidate: str = ""
    question: str = ""
    short_answer: str = ""
    choices: list[str] = field(default_factory=list)
    generic: bool = False


def detect(text: str) -> Intent:
    t = text.strip()
    if t.startswith(vp.DESCRIBE_PROMPT):
        return Intent("describe", style="detailed")
    if t.startswith(vp.FROM_DESCRIPTION_PREFIX):
        d = _DESCRIPTION.search(t)
        rest = t[d.end() :] if d else t[len(vp.FROM_DESCRIPTION_PREFIX) :]
        inner = detect(rest)
        return Intent(
            "from_description",
            caption=d.group(1) if d else "",
            question=inner.question,
            choices=inner.choices,
        )
    if t.startswith(vp.JUDGE_PREFIX):
        q, r, a = _QUESTION.search(t), _REFERENCE.search(t), _ANSWER.search(t)
        return Intent(
            "judge",
            question=q.group(1).strip() if q else "",
            short_answer=r.group(1).strip() if r else "",
            candidate=a.group(1).strip() if a else "",
        )
    if t.startswith(vp.CAPTION_PREFIX):
        m = _STYLE.search(t)
        w = _MAX_WORDS.search(t)
        return Intent(
            "caption", style=m.group(1).lower() if m else "short", max_words=int(w.group(1)) if w else None
        )
    if t.startswith(vp.REWRITE_PREFIX):
        f = _FEEDBACK.search(t)
        return Intent(
            "rewrite", caption=vp.quoted_fields(t).get("caption", ""), feedback=f.group(1) if f else ""
        )
    if t.startswith(vp.FUSE_PREFIX):
        fields = vp.quoted_fields(t)
        return Intent("fuse", original=fields.get("original", ""), candidate=fields.get("candidate", ""))
    if t.startswith(vp.COT_PREFIX):
        q = _QUESTION.search(t)
        s = _SHORT.search(t)
        return Intent(
            "cot", question=q.group(1).strip() if q else "", short_answer=s.group(1).strip() if s else ""
        )
    if t.endswith(_LETTER_SUFFIX):
        lines = t[: -len(_LETTER_SUFFIX)].rstrip().splitlines()
        choices: list[str] = []
        while lines and (m := _CHOICE.match(lines[-1].strip())):
            choices.insert(0, m.group(2))
            lines.pop()
        return Intent("answer", question="\n".join(lines).strip(), choices=choices)
    if t.endswith(vp.SHORT_ANSWER_SUFFIX):
        return Intent("answer", question=t[: -len(vp.SHORT_ANSWER_SUFFIX)].strip())
    if t.endswith("?"):
        return Intent("answer", question=t)
    return Intent("caption", generic=True)
