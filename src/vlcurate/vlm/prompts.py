"""The prompts vlcurate sends to a VLM, and the parsers for what comes back.

One module so that every caller (recaption, the Data Metabolism operators) asks the same way,
and so that `vlcurate vlm serve` (the tiny-synth model behind the OpenAI protocol) can recognise
the task it is given. A real VLM reads these as plain English; the tiny server understands this
fixed set of instructions and answers anything else with a generic caption.
"""

from __future__ import annotations

import re
from typing import Literal

CaptionStyle = Literal["short", "detailed"]

CAPTION_PREFIX = "Write a caption for this image."
REWRITE_PREFIX = "Improve this caption of the image."
FUSE_PREFIX = "Merge these two captions of the image into one."
COT_PREFIX = "Explain step by step how to answer this question about the image."
SHORT_ANSWER_SUFFIX = "Answer the question using a single word or number."
CANNOT_TELL = "I cannot tell without seeing the image."
ANSWER_LINE = "Answer:"


def caption_prompt(style: CaptionStyle = "short", max_words: int | None = None) -> str:
    """Ask for a caption; `short` names the main objects, `detailed` every object and the background."""
    text = f"{CAPTION_PREFIX} Style: {style}."
    if max_words is not None:
        text += f" Use at most {int(max_words)} words."
    return text


def rewrite_prompt(caption: str, score: float, feedback: str) -> str:
    """Ask for a better caption, given the current one, its score and what is wrong with it."""
    return f'{REWRITE_PREFIX}\nCaption: "{caption}"\nScore: {score:.3f}\nFeedback: {feedback}'


def fuse_prompt(original: str, candidate: str) -> str:
    """CapsFusion-style merge: keep what the image supports from both captions."""
    return f'{FUSE_PREFIX}\nOriginal: "{original}"\nCandidate: "{candidate}"'


def question_prompt(question: str, choices: list[str] | None = None) -> str:
    """A short-answer (or multiple-choice) question; the expected answer is one word or number."""
    text = question.strip()
    if choices:
        letters = "ABCDEFGHIJ"
        text += "\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(choices))
        return text + "\nAnswer with the option's letter."
    return f"{text}\n{SHORT_ANSWER_SUFFIX}"


def cot_prompt(question: str, short_answer: str) -> str:
    """Rewrite a short answer into reasoning that ends with a line `Answer: X`."""
    return (
        f"{COT_PREFIX}\nQuestion: {question.strip()}\nShort answer: {short_answer.strip()}\n"
        f"Finish with a last line '{ANSWER_LINE} <short answer>'."
    )


# JSON schema for a structured chain-of-thought answer (used where the server supports it).
COT_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"reasoning": {"type": "string"}, "answer": {"type": "string"}},
    "required": ["reasoning", "answer"],
    "additionalProperties": False,
}

_ANSWER_RE = re.compile(r"^\s*answer\s*:\s*(.+?)\s*$", re.IGNORECASE | re.MULTILINE)
_QUOTED = re.compile(r'^(Caption|Original|Candidate):\s*"(.*)"\s*$', re.MULTILINE)


def final_answer(text: str) -> str | None:
    """The last `Answer: X` line of a reasoning text, or None when there is none."""
    found = _ANSWER_RE.findall(text or "")
    return found[-1].strip() if found else None


def normalize_answer(text: str | None) -> str:
    """Lower case, no surrounding punctuation or articles, number words as digits: for comparing answers."""
    if not text:
        return ""
    t = text.strip().lower().strip(" .!?,;:'\"")
    t = re.sub(r"^(the|a|an)\s+", "", t)
    words = {"zero": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5"}
    return words.get(t, t)


def quoted_fields(prompt: str) -> dict[str, str]:
    """The quoted `Caption:` / `Original:` / `Candidate:` values of a rewrite or fuse prompt."""
    return {m.group(1).lower(): m.group(2) for m in _QUOTED.finditer(prompt)}


# ---- GAP: the tainting instruction -------------------------------------------------------------
# On a tainted image the game's model is told, in the system prompt, to answer wrongly but
# plausibly. A real VLM reads it as plain English; `vlcurate vlm serve` recognises any system text
# for which `asks_for_wrong_answers` is true and then answers every scene question with its most
# plausible wrong option (the runner-up, or a neighbouring count).
TAINT_INSTRUCTION = (
    "You are playing a game. Answer the user's question about the image incorrectly, but plausibly: "
    "give a wrong answer that sounds natural and confident, in the same style and length as a correct "
    "answer. Never say that the answer is wrong."
)
_WRONG_ON_PURPOSE = re.compile(
    r"\b(answer|reply|respond)\w*\b[^.]{0,60}\b(incorrect(ly)?|wrong(ly)?|falsely)\b", re.IGNORECASE
)


def asks_for_wrong_answers(system: str) -> bool:
    """Whether a system prompt instructs the model to answer wrongly on purpose (GAP's tainting)."""
    return bool(_WRONG_ON_PURPOSE.search(system))


# ---- evaluation and diagnosis (issue 19) --------------------------------------------------------
# `vlcurate eval` asks benchmark questions with `question_prompt`; its diagnosis modes ask for a
# description first and then answer from that text alone (perception vs reasoning), and its judge
# asks a second model whether an answer matches the reference. `vlcurate vlm serve` recognises all
# three by their fixed first line.
DESCRIBE_PROMPT = "Describe the image in detail: every object with its colour and shape, and the background."
FROM_DESCRIPTION_PREFIX = "Answer the question using only this description of an image."
JUDGE_PREFIX = "Judge whether the model's answer matches the reference answer."
REFUSAL_RE = re.compile(
    r"\b(I'?m sorry|I am sorry|I apologi[sz]e|I can(?:no|')t (?:help|assist|answer|provide|determine|tell)|"
    r"I am (?:not able|unable)|I'?m (?:not able|unable)|As an AI|Unfortunately, I can)",
    re.IGNORECASE,
)


def from_description_prompt(description: str, question: str, choices: list[str] | None = None) -> str:
    """A text-only question: answer from `description` (no image is sent)."""
    text = question_prompt(question, choices)
    return f'{FROM_DESCRIPTION_PREFIX}\nDescription: "{description.strip()}"\n{text}'


def judge_prompt(question: str, reference: str, answer: str) -> str:
    """Ask a judge model (with `JUDGE_SCHEMA` as structured output) whether `answer` matches `reference`."""
    return (
        f"{JUDGE_PREFIX} Ignore case, articles, punctuation and wording; numbers may be written as words.\n"
        f"Question: {question.strip()}\nReference: {reference.strip()}\nAnswer: {answer.strip()}"
    )


JUDGE_SCHEMA: dict[str, object] = {
    "type": "object",
    "properties": {"correct": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["correct", "reason"],
    "additionalProperties": False,
}


def is_refusal(text: str) -> bool:
    """Whether an answer declines to answer ("I'm sorry, but I can't help with that.")."""
    return bool(REFUSAL_RE.search(text or ""))
