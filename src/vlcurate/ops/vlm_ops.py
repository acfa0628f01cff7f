"""Model-based Data Metabolism operators: questions answerable blind, questions unrelated to the
image, hallucinated objects (CHAIR-style), and chain-of-thought rewriting checked against the
short answer.

Operators that ask a VLM embed the client's `VLMSettings` (a recipe names the server:
`vlm: {base_url: ..., model: ...}`); those that score image-text pairs load the local CLIP-style
scorer once per worker. Rows an earlier step dropped are not sent to any model. A failed VLM call
never drops a sample: it is kept, with the error in the operator's status column.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.io.instruct import columns as C
from vlcurate.io.instruct.model import ASSISTANT, IMAGE_TOKEN, USER, Message
from vlcurate.ops.base import Operator, OpParams, keep_mask, mark, set_column
from vlcurate.ops.fingerprint import model_identity
from vlcurate.ops.instruct_ops import chosen_letter
from vlcurate.ops.pair_ops import quiet_loading
from vlcurate.ops.registry import register
from vlcurate.vlm.client import VLMRequest, VLMResult, VLMSettings, run_many
from vlcurate.vlm.prompts import (
    ANSWER_LINE,
    COT_SCHEMA,
    SHORT_ANSWER_SUFFIX,
    cot_prompt,
    final_answer,
    normalize_answer,
    question_prompt,
)

_OPTION = re.compile(r"^\s*[A-J]\.\s+\S")
_INLINE_OPTIONS = re.compile(r"\s+A\.\s+\S.*$", re.DOTALL)
_LETTER_SUFFIX = "Answer with the option's letter."


# --- shared helpers ---------------------------------------------------------------------------------


def bare_question(content: str) -> str:
    """A user turn's question without image placeholders, option lines or answer-format suffixes."""
    text = content.replace(IMAGE_TOKEN, " ")
    for suffix in (SHORT_ANSWER_SUFFIX, _LETTER_SUFFIX):
        text = text.replace(suffix, " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not _OPTION.match(ln)]
    return " ".join(_INLINE_OPTIONS.sub("", " ".join(lines)).split())


def first_question(messages: list[Message]) -> tuple[int, str] | None:
    """(index of the first assistant turn, the question it answers), or None when there is none."""
    question: str | None = None
    for i, m in enumerate(messages):
        if m.role == USER:
            question = m.content
        elif m.role == ASSISTANT and question is not None:
            return i, bare_question(question)
    return None


def _choices(meta: dict[str, Any]) -> list[str] | None:
    value = meta.get(C.CHOICES)
    return [str(c) for c in value] if isinstance(value, list) and value else None


def _short(meta: dict[str, Any]) -> str | None:
    value = meta.get(C.SHORT_ANSWER)
    return str(value).strip() if value is not None and str(value).strip() else None


def _strings(values: list[str | None]) -> pa.Array:
    return pa.array(values, pa.string())


def _error_text(result: VLMResult) -> str:
    return " ".join((result.error or "unknown error").split())[:200]


class VLMParams(OpParams):
    vlm: VLMSettings = Field(default=VLMSettings(), description="The OpenAI-compatible server to ask.")
    max_tokens: int = Field(default=32, ge=1, le=8192)


class ScorerParams(OpParams):
    model: str = Field(default="tiny-synth", description="A scorer from `vlcurate models`.")
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    batch_size: int = Field(default=256, ge=1, le=8192)
    allow_download: bool = False


class _ScorerOp(Operator):
    """An operator that loads the local CLIP-style scorer once per worker."""

    uses_model = True

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._scorer: Any = None

    def resources(self) -> dict[str, Any]:
        return {"model": model_identity(self.params.model)}  # type: ignore[attr-defined]

    def setup(self) -> None:
        from vlcurate.models.loader import load_scorer
        from vlcurate.recaption.scoring import CaptionScorer

        p = self.params
        assert isinstance(p, ScorerParams)
        if self._scorer is None:
            with quiet_loading():
                clip = load_scorer(
                    p.model, device=p.device, precision=p.precision, allow_download=p.allow_download
                )
            self._scorer = CaptionScorer(clip, p.batch_size)


# --- blind_answerable -------------------------------------------------------------------------------


class BlindParams(VLMParams):
    answer_in_question: bool = Field(
        default=True,
        description="Also drop, without asking, when the short answer (a word, not yes/no or a number) "
        "appears in the question itself ('What colour is the red star?').",
    )


def answer_in_question(question: str, short: str, choices: list[str] | None) -> bool:
    """The question states its own answer: the answer word (or the right option's text) is in it."""
    want = normalize_answer(short)
    if choices and len(want) == 1 and want.isalpha():
        k = C.OPTION_LETTERS.find(want.upper())
        want = normalize_answer(choices[k]) if 0 <= k < len(choices) else ""
    if not want or want in ("yes", "no") or any(ch.isdigit() for ch in want):
        return False
    return re.search(rf"\b{re.escape(want)}\b", question.lower()) is not None


@register
class BlindAnswerable(Operator):
    """Drop questions the VLM answers right without the image (the answer is in the text itself).

    Asks each kept QA sample's question with no image (`question_prompt`); when the blind answer,
    normalised, equals the sample's short answer the question does not need the image: reason
    `blind_answerable`. A question that names its own answer is dropped without asking
    (`answer_in_question`). Adds `blind_answer` and `blind_status` (ok | leak | error:<msg>).
    """

    name = "blind_answerable"
    kind = "filter"
    Params = BlindParams
    requires = ("uid", C.MESSAGES, C.META)

    def provides(self) -> tuple[str, ...]:
        return (*super().provides(), "blind_answer", "blind_status")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, BlindParams)
        n = batch.num_rows
        keep = np.ones(n, dtype=bool)
        answers: list[str | None] = [None] * n
        status: list[str | None] = [None] * n
        rows, reqs, wanted = [], [], []
        for i, (live, msgs, meta) in enumerate(
            zip(keep_mask(batch), C.conversations(batch), C.meta(batch), strict=True)
        ):
            short, first = _short(meta), first_question(msgs)
            if not live or short is None or first is None or not first[1]:
                continue
            choices = _choices(meta)
            if p.answer_in_question and answer_in_question(first[1], short, choices):
                keep[i], status[i] = False, "leak"
                continue
            rows.append(i)
            wanted.append((short, choices))
            reqs.append(VLMRequest(prompt=question_prompt(first[1], choices), max_tokens=p.max_tokens))
        for i, r, (short, choices) in zip(rows, run_many(p.vlm, reqs) if reqs else [], wanted, strict=True):
            if not r.ok:
                status[i] = f"error:{_error_text(r)}"
                continue
            answers[i], status[i] = r.text.strip(), "ok"
            keep[i] = not _same_answer(r.text, short, choices)
        batch = mark(batch, keep, "blind_answerable")
        batch = set_column(batch, "blind_answer", _strings(answers))
        return set_column(batch, "blind_status", _strings(status))


def _same_answer(answer: str, short: str, choices: list[str] | None) -> bool:
    """Normalised equality; for multiple choice the option letter or the option's text both count."""
    if normalize_answer(answer) == normalize_answer(short):
        return True
    if choices and len(short) == 1 and short.isalpha():
        return chosen_letter(answer, C.OPTION_LETTERS[: len(choices)], choices) == short.upper()
    return False


# --- question_relevance -----------------------------------------------------------------------------


class RelevanceParams(ScorerParams):
    min_score: float = Field(
        ge=-1.0,
        le=1.0,
        description="Drop questions scoring below this (required: no threshold suits every model; "
        "on tiny-synth question-image scores separate own from other images with AUC 0.58 only).",
    )
    column: str = Field(default="question_score", description="Column for the question-image score.")


@register
class QuestionRelevance(_ScorerOp):
    """Drop questions unrelated to their image: image-text score of the question below `min_score`.

    The question (without options or answer-format suffixes) is scored against the image with the
    local scorer; reason `question_unrelated`. Samples without an image or question are kept.
    """

    name = "question_relevance"
    kind = "filter"
    Params = RelevanceParams
    requires = ("uid", "text", "image")

    def provides(self) -> tuple[str, ...]:
        return (*super().provides(), self.params.column)  # type: ignore[attr-defined]

    def stat_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, RelevanceParams)
        self.setup()
        n = batch.num_rows
        questions = [bare_question(t or "") for t in batch.column("text").to_pylist()]
        live = keep_mask(batch)
        rows = [i for i in range(n) if live[i] and questions[i]]
        scores = np.full(n, np.nan, dtype=np.float32)
        if rows:
            images = batch.column("image").to_pylist()
            emb = self._scorer.embed_images([images[i] for i in rows])
            s = self._scorer.score(emb.emb, [questions[i] for i in rows])
            scores[rows] = np.where([emb.ok(j) for j in range(len(rows))], s, np.nan)
        keep = ~(scores < p.min_score)  # NaN (no image or question) compares False: kept
        batch = mark(batch, keep, "question_unrelated")
        return set_column(batch, p.column, pa.array(scores, pa.float32()))


# --- hallucination ----------------------------------------------------------------------------------


class HallucinationParams(ScorerParams):
    field: Literal["answer", "text"] = Field(
        default="answer", description="answer: every assistant turn (instruct data); text: the caption."
    )
    mentions: str = Field(
        default="synth", description="Mention extractor: synth, a registered name, or module:function."
    )
    tau: float = Field(
        default=0.0, ge=-1.0, le=1.0, description="Unsupported when dropping it raises the score by more."
    )


@register
class Hallucination(_ScorerOp):
    """CHAIR-style: drop answers or captions that name objects the image does not support.

    Each mention (found by the pluggable extractor) is checked by leave-one-out with the local
    scorer: when the text without it fits the image better by more than `tau`, the image does not
    support it (greedily, worst first, judging the rest again without it). Adds `chair_i`
    (unsupported / mentions; null without mentions), `hallucinated` (the unsupported mentions,
    worst first) and drops with reason `hallucination:<worst one>`.
    """

    name = "hallucination"
    kind = "filter"
    Params = HallucinationParams
    requires = ("uid", "image")

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        from vlcurate.recaption.mentions import get_extractor

        assert isinstance(self.params, HallucinationParams)
        self._extract = get_extractor(self.params.mentions)

    def required_columns(self) -> tuple[str, ...]:
        return (C.MESSAGES,) if self.params.field == "answer" else ("text",)  # type: ignore[attr-defined]

    def provides(self) -> tuple[str, ...]:
        return (*super().provides(), "chair_i", "hallucinated")

    def stat_columns(self) -> tuple[str, ...]:
        return ("chair_i",)

    def _texts(self, batch: pa.Table) -> list[str]:
        p = self.params
        assert isinstance(p, HallucinationParams)
        if p.field == "text":
            return [t or "" for t in batch.column("text").to_pylist()]
        return [" ".join(C.assistant_texts(msgs)) for msgs in C.conversations(batch)]

    def process(self, batch: pa.Table) -> pa.Table:
        from vlcurate.recaption.mentions import unsupported_mentions

        p = self.params
        assert isinstance(p, HallucinationParams)
        self.setup()
        n = batch.num_rows
        live = keep_mask(batch)
        texts = self._texts(batch)
        mentions = [list(dict.fromkeys(self._extract(t))) if live[i] else [] for i, t in enumerate(texts)]
        rows = [i for i in range(n) if mentions[i]]
        chair: list[float | None] = [None] * n
        found: list[list[str] | None] = [None] * n
        keep = np.ones(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        if rows:
            images = batch.column("image").to_pylist()
            emb = self._scorer.embed_images([images[i] for i in rows])
            good = [j for j in range(len(rows)) if emb.ok(j)]
            flagged = unsupported_mentions(
                self._scorer, emb.emb[good], [mentions[rows[j]] for j in good], p.tau
            )
            for j, bad in zip(good, flagged, strict=True):
                i = rows[j]
                chair[i], found[i] = len(bad) / len(mentions[i]), bad
                if bad:
                    keep[i], reasons[i] = False, f"hallucination:{bad[0]}"
        batch = mark(batch, keep, reasons)
        batch = set_column(batch, "chair_i", pa.array(chair, pa.float32()))
        return set_column(batch, "hallucinated", pa.array(found, pa.list_(pa.string())))


# --- cot_rewrite ------------------------------------------------------------------------------------


class CotParams(VLMParams):
    max_tokens: int = Field(default=512, ge=16, le=8192)
    structured: bool = Field(
        default=True, description="Ask for JSON {reasoning, answer} (COT_SCHEMA); else parse 'Answer: X'."
    )


@register
class CotRewrite(Operator):
    """Rewrite short answers into reasoning plus answer with the VLM; keep only rewrites that agree.

    For each kept QA sample with a short answer, asks `cot_prompt` with the image; the rewrite is
    kept (`messages_cot`: the conversation with its first answer replaced) only when its final
    answer matches the short answer. `cot_status`: ok | mismatch:<their answer> | error:<msg>.
    A map: nothing is dropped, and the sink writes both versions.
    """

    name = "cot_rewrite"
    kind = "map"
    Params = CotParams
    requires = ("uid", "image", C.MESSAGES, C.META)

    def provides(self) -> tuple[str, ...]:
        return (C.MESSAGES_COT, "cot_status")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, CotParams)
        n = batch.num_rows
        convs, metas, live = C.conversations(batch), C.meta(batch), keep_mask(batch)
        images = batch.column("image").to_pylist()
        out: list[str | None] = [None] * n
        status: list[str | None] = [None] * n
        jobs: list[tuple[int, int, str, list[str] | None]] = []
        reqs: list[VLMRequest] = []
        for i in range(n):
            short, first = _short(metas[i]), first_question(convs[i])
            if not live[i] or short is None or first is None or not first[1]:
                continue
            if not images[i]:
                status[i] = "error:no image"
                continue
            choices = _choices(metas[i])
            shown = _display_answer(short, choices)
            jobs.append((i, first[0], short, choices))
            reqs.append(
                VLMRequest(
                    prompt=cot_prompt(first[1], shown),
                    images=[images[i]],
                    max_tokens=p.max_tokens,
                    json_schema=COT_SCHEMA if p.structured else None,
                    schema_name="cot",
                )
            )
        results = run_many(p.vlm, reqs) if reqs else []
        # A server that cannot give JSON at all (neither `response_format` nor in the prompt) still
        # writes reasoning ending in 'Answer: X': ask those again in plain text.
        again = [k for k, r in enumerate(results) if p.structured and _format_failure(r)]
        if again:
            plain = [reqs[k].model_copy(update={"json_schema": None}) for k in again]
            for k, r in zip(again, run_many(p.vlm, plain), strict=True):
                results[k] = r
        for (i, turn, short, choices), r in zip(jobs, results, strict=True):
            if not r.ok:
                status[i] = f"error:{_error_text(r)}"
                continue
            reasoning, answer = _cot_parts(r)
            if answer is None or not reasoning:
                status[i] = "error:no final answer in the model's output"
            elif not _same_answer(answer, short, choices):
                status[i] = f"mismatch:{' '.join(answer.split())[:80]}"
            else:
                msgs = list(convs[i])
                msgs[turn] = Message(role=ASSISTANT, content=f"{reasoning}\n{ANSWER_LINE} {short}")
                out[i], status[i] = C.dump_messages(msgs), "ok"
        batch = set_column(batch, C.MESSAGES_COT, _strings(out))
        return set_column(batch, "cot_status", _strings(status))


def _format_failure(r: VLMResult) -> bool:
    """The answer came but was not the requested JSON (the client's validating fallback gave up)."""
    return not r.ok and ("not JSON" in (r.error or "") or "schema" in (r.error or ""))


def _display_answer(short: str, choices: list[str] | None) -> str:
    """'B' -> 'B. red' for multiple choice, so the reasoning can be about the option itself."""
    if choices and len(short) == 1 and short.isalpha():
        k = C.OPTION_LETTERS.find(short.upper())
        if 0 <= k < len(choices):
            return f"{short.upper()}. {choices[k]}"
    return short


def _cot_parts(r: VLMResult) -> tuple[str, str | None]:
    """(reasoning, final answer) from a structured reply when there is one, else from 'Answer: X'."""
    parsed = r.parsed[0] if r.parsed else None
    if isinstance(parsed, dict) and isinstance(parsed.get("answer"), str):
        return str(parsed.get("reasoning") or "").strip(), parsed["answer"].strip() or None
    text = r.text or ""
    answer = final_answer(text)
    lines = [ln for ln in text.splitlines() if not ln.strip().lower().startswith(ANSWER_LINE.lower())]
    return "\n".join(lines).strip(), answer
