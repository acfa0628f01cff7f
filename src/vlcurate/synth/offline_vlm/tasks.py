"""Run one detected task on the brain and shape its output (free text or JSON)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from vlcurate.synth.offline_vlm.answers import Brain, with_answer_line
from vlcurate.synth.offline_vlm.intent import Intent
from vlcurate.synth.offline_vlm.reading import answer_from_description, judge
from vlcurate.vlm import prompts as vp
from vlcurate.vlm.wire import SCHEMA_INSTRUCTION


@dataclass(frozen=True)
class Output:
    """One choice's content as free text plus the named fields a JSON answer is built from."""

    text: str
    fields: dict[str, Any]


def run_task(
    brain: Brain,
    intent: Intent,
    image: np.ndarray | None,
    key: str | None,
    *,
    n: int,
    temperature: float,
    seed: int,
    tainted: bool = False,
) -> list[Output]:
    """n outputs for the intent; without an image only a blind answer is possible. `tainted`: the
    system prompt asked for wrong answers (`vlm.prompts.asks_for_wrong_answers`). Answering from a
    description and judging read text only, with or without an image."""
    if intent.task == "from_description":
        ans = answer_from_description(intent.caption, intent.question, intent.choices or None, brain.weakness)
        return [Output(ans, {"answer": ans})] * n
    if intent.task == "judge":
        ok, reason = judge(intent.question, intent.short_answer, intent.candidate)
        text = f"{'correct' if ok else 'incorrect'}: {reason}"
        return [Output(text, {"correct": ok, "reason": reason, "answer": "yes" if ok else "no"})] * n
    if image is None or key is None:
        question = intent.question
        if intent.task in ("answer", "cot") and question:
            ans = brain.blind_answer(question, intent.choices or None)
        else:
            ans = vp.CANNOT_TELL
        if intent.task == "cot":
            reasoning = "There is no image, so I can only read the question."
            return [Output(with_answer_line(reasoning, ans), {"reasoning": reasoning, "answer": ans})] * n
        return [Output(ans, {"answer": ans, "caption": ans})] * n
    if intent.task == "describe":
        d = brain.describe(image, key)
        d = d[0].upper() + d[1:] + "."
        return [Output(d, {"caption": d, "description": d})] * n
    if intent.task == "caption":
        caps = brain.caption(
            image,
            key,
            style=intent.style,
            max_words=intent.max_words,
            n=n,
            temperature=temperature,
            seed=seed,
        )
        return [Output(c, {"caption": c}) for c in caps]
    if intent.task == "rewrite":
        c = brain.rewrite(image, key, intent.caption, intent.feedback)
        return [Output(c, {"caption": c})] * n
    if intent.task == "fuse":
        c = brain.fuse(image, key, intent.original, intent.candidate)
        return [Output(c, {"caption": c})] * n
    if intent.task == "cot":
        reasoning, ans = brain.cot(image, key, intent.question)
        return [Output(with_answer_line(reasoning, ans), {"reasoning": reasoning, "answer": ans})] * n
    a = brain.answer(image, key, intent.question, intent.choices or None, tainted=tainted)
    return [Output(a.text, {"answer": a.text})] * n


def _fill(schema: dict[str, Any], fields: dict[str, Any], text: str) -> Any:
    """A value of `schema` built from the task's fields (by property name), else from the text."""
    kind = schema.get("type")
    if "enum" in schema:
        options = list(schema["enum"])
        norm = [vp.normalize_answer(str(o)) for o in options]
        want = vp.normalize_answer(str(fields.get("answer", text)))
        return options[norm.index(want)] if want in norm else options[0]
    if kind == "object" or "properties" in schema:
        props: dict[str, Any] = schema.get("properties", {})
        if not props:
            return dict(fields)
        return {
            name: (fields[name] if name in fields else _fill(sub, fields, text))
            for name, sub in props.items()
        }
    if kind == "array":
        return [_fill(schema.get("items", {}), fields, text)]
    if kind in ("number", "integer"):
        try:
            return int(fields.get("answer", 0)) if kind == "integer" else float(fields.get("answer", 0))
        except (TypeError, ValueError):
            return 0
    if kind == "boolean":
        return str(fields.get("answer", "")).lower() == "yes"
    return text


def as_json(output: Output, schema: dict[str, Any] | None) -> str:
    """The output as a JSON document (following `schema` when given)."""
    if schema is None:
        return json.dumps(output.fields)
    return json.dumps(_fill(schema, output.fields, output.text))


def split_schema_instruction(text: str) -> tuple[str, dict[str, Any] | None]:
    """The prompt without a trailing "reply with JSON matching this schema" instruction, and that schema.

    A schema that does not parse as a JSON object leaves the prompt as it is (answered in free text).
    """
    head, sep, tail = text.rpartition(SCHEMA_INSTRUCTION)
    if not sep:
        return text, None
    try:
        schema = json.loads(tail.strip())
    except ValueError:
        return text, None
    if not isinstance(schema, dict):
        return text, None
    return head.rstrip(), schema
