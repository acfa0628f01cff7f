"""What every instruction-data operator reads from a batch: conversations, turns and meta.

An instruct source gives each row `messages` (JSON list of {role, content}, `<image>` placeholders
kept) and `meta` (JSON object of every other field of the sample). These helpers decode them, so
operators never parse JSON themselves; a row the reader could not parse has null columns and reads
as an empty conversation and empty meta.

Meta keys with a meaning for the operators are constants here (`SHORT_ANSWER`, ...).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

from vlcurate.io.instruct.model import ASSISTANT, USER, Message, strip_placeholders

MESSAGES, META, MESSAGES_COT = "messages", "meta", "messages_cot"

SHORT_ANSWER = "short_answer"  # the ground-truth short answer of a QA sample ("3", "red", "yes", "B")
CHOICES = "choices"  # multiple choice: the option texts, in letter order (A, B, ...)
FINISH_REASON = "finish_reason"  # the teacher's finish reason: "stop", "length" (cut off), ...
LANGUAGE = "language"  # the language the answer should be in (ISO 639-1); default English
KIND = "kind"  # what the sample is: count, colour, shape, exists (QA kinds), description, ...

OPTION_LETTERS = "ABCDEFGHIJ"


def parse_messages(raw: str | None) -> list[Message]:
    """A `messages` cell as messages ([] for a null cell)."""
    if not raw:
        return []
    return [Message(role=str(m["role"]), content=str(m["content"])) for m in json.loads(raw)]


def dump_messages(messages: list[Message]) -> str:
    """Messages as a `messages` cell (what an operator writes into e.g. `messages_cot`)."""
    return json.dumps([m.model_dump() for m in messages], ensure_ascii=False)


def conversations(batch: pa.Table, column: str = MESSAGES) -> list[list[Message]]:
    """Each row's conversation."""
    return [parse_messages(raw) for raw in batch.column(column).to_pylist()]


def meta(batch: pa.Table) -> list[dict[str, Any]]:
    """Each row's meta dict ({} for a null cell)."""
    out: list[dict[str, Any]] = []
    for raw in batch.column(META).to_pylist():
        value = json.loads(raw) if raw else {}
        out.append(value if isinstance(value, dict) else {})
    return out


def turns(messages: list[Message]) -> list[tuple[str, str]]:
    """(question, answer) for each user turn answered by the next assistant turn; placeholders removed
    from the question. System turns are skipped; a user turn with no answer is left out."""
    out: list[tuple[str, str]] = []
    question: str | None = None
    for m in messages:
        if m.role == USER:
            question = strip_placeholders(m.content)
        elif m.role == ASSISTANT and question is not None:
            out.append((question, m.content))
            question = None
    return out


def assistant_texts(messages: list[Message]) -> list[str]:
    """The content of every assistant turn, in order."""
    return [m.content for m in messages if m.role == ASSISTANT]
