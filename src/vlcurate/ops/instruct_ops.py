"""Instruction-data filters that need no model: repetition, abnormal teacher behaviour, and
agreement with the ground-truth short answer (the Data Metabolism filters of Capybara-VL).

They read the instruct source's `messages` and `meta` columns (through `instruct.columns`) and
look at the assistant turns. Each drop has a specific reason, e.g. `repetition:loop`, `refusal`,
`language:fr`, `format:invalid_choice`, `answer_mismatch`, so a report says what went wrong.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.io.instruct import columns as C
from vlcurate.io.instruct.model import Message
from vlcurate.ops.base import Operator, OpParams, mark, set_column
from vlcurate.ops.registry import register
from vlcurate.stats import text as T
from vlcurate.vlm.prompts import final_answer, normalize_answer

_NEEDS = ("uid", C.MESSAGES, C.META)


# --- repetition -------------------------------------------------------------------------------------


def longest_loop(tokens: list[str], max_period: int) -> tuple[int, int]:
    """(repeats, period) of the longest run of one span repeated back to back (1 when nothing repeats).

    For each period p, positions where token i equals token i + p form runs; a run of length L
    means the span of p tokens occurs floor(L / p) + 1 times in a row.
    """
    n = len(tokens)
    if n < 2:
        return 1, 0
    ids = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    arr = np.fromiter((ids[t] for t in tokens), dtype=np.int64, count=n)
    best, best_p = 1, 0
    for p in range(1, min(max_period, n // 2) + 1):
        eq = arr[:-p] == arr[p:]
        if not eq.any():
            continue
        padded = np.concatenate(([0], eq.view(np.int8), [0]))
        edges = np.flatnonzero(np.diff(padded))
        run = int((edges[1::2] - edges[::2]).max())
        repeats = run // p + 1
        if repeats > best:
            best, best_p = repeats, p
    return best, best_p


_CJK = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")
_TERMINAL = tuple(".!?。！？…\"'”’)]}*`")


def loop_repeats(text: str, max_period_words: int, max_period_chars: int) -> int:
    """How many times the most repeated span repeats back to back, by words (or characters for text
    written without spaces, e.g. Chinese)."""
    words = T.repetition_words(text)
    by_words, _ = longest_loop(words, max_period_words)
    if _CJK.search(text):
        chars = [c for c in text if not c.isspace()]
        by_chars, period = longest_loop(chars, max_period_chars)
        if period >= 2:
            by_words = max(by_words, by_chars)
    return by_words


class RepetitionParams(OpParams):
    char_n: int = Field(default=10, ge=1, le=50, description="Character n-gram size (Data-Juicer's).")
    word_n: int = Field(default=10, ge=1, le=50, description="Word n-gram size (Data-Juicer's).")
    max_char_repetition: float | None = Field(
        default=0.5, ge=0, le=1, description="Drop above this character n-gram repetition ratio."
    )
    max_word_repetition: float | None = Field(
        default=0.5, ge=0, le=1, description="Drop above this word n-gram repetition ratio."
    )
    loop_repeats: int | None = Field(
        default=4, ge=2, description="Drop when one span repeats this many times back to back."
    )
    max_loop_period: int = Field(default=30, ge=1, le=200, description="Longest span (words) to look for.")
    truncated_finish_reason: bool = Field(
        default=True, description="Drop answers whose meta finish_reason is 'length' (cut off)."
    )
    unterminated_min_words: int | None = Field(
        default=8, ge=1, description="Drop answers of at least this many words with no final punctuation."
    )


@register
class InstructRepetition(Operator):
    """Repetition in assistant turns: n-gram repetition ratios, looping generations, truncated answers."""

    name = "instruct_repetition"
    kind = "filter"
    Params = RepetitionParams
    requires = _NEEDS

    def provides(self) -> tuple[str, ...]:
        return ("answer_char_repetition", "answer_word_repetition", "answer_loop_repeats", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("answer_char_repetition", "answer_word_repetition", "answer_loop_repeats")

    def _why(self, answers: list[str], meta: dict[str, Any], stats: tuple[float, float, int]) -> str | None:
        p = self.params
        assert isinstance(p, RepetitionParams)
        cr, wr, loops = stats
        if p.loop_repeats is not None and loops >= p.loop_repeats:
            return "repetition:loop"
        if p.max_char_repetition is not None and cr > p.max_char_repetition:
            return "repetition:ngram"
        if p.max_word_repetition is not None and wr > p.max_word_repetition:
            return "repetition:ngram"
        if p.truncated_finish_reason and meta.get(C.FINISH_REASON) == "length":
            return "repetition:truncated"
        if p.unterminated_min_words is not None:
            for a in answers:
                s = a.rstrip()
                if T.word_count(s) >= p.unterminated_min_words and not s.endswith(_TERMINAL):
                    return "repetition:truncated"
        return None

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, RepetitionParams)
        convs, metas = C.conversations(batch), C.meta(batch)
        n = batch.num_rows
        cr, wr = np.zeros(n, np.float32), np.zeros(n, np.float32)
        loops = np.ones(n, np.int32)
        keep = np.ones(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for i, (conv, meta) in enumerate(zip(convs, metas, strict=True)):
            answers = C.assistant_texts(conv)
            if not answers:
                continue
            cr[i] = max(T.char_repetition_ratio(a, p.char_n) for a in answers)
            wr[i] = max(T.word_repetition_ratio(a, p.word_n) for a in answers)
            loops[i] = max(loop_repeats(a, p.max_loop_period, p.max_loop_period * 4) for a in answers)
            reasons[i] = self._why(answers, meta, (float(cr[i]), float(wr[i]), int(loops[i])))
            keep[i] = reasons[i] is None
        batch = set_column(batch, "answer_char_repetition", pa.array(cr))
        batch = set_column(batch, "answer_word_repetition", pa.array(wr))
        batch = set_column(batch, "answer_loop_repeats", pa.array(loops))
        return mark(batch, keep, reasons)


# --- abnormal teacher behaviour ------------------------------------------------------------------------

REFUSAL_PATTERNS: tuple[str, ...] = (
    r"\b(?:i'?m|i am)\s+(?:so\s+|very\s+|really\s+)?sorry\b",
    r"\bi\s+apologi[sz]e\b",
    r"\bas an ai\b",
    r"\b(?:i|we)\s*(?:can'?t|cannot|can not|won'?t|(?:'m|am|'re|are)\s+(?:not\s+able|unable))\s+(?:to\s+)?"
    r"(?:help|assist|answer|provide|determine|see|view|tell|comply|fulfill|do that|identify)\b",
    r"\bunable to (?:help|assist|answer|determine|see|view|identify)\b",
    r"^\s*sorry\b",
)
_OPTION_LINE = re.compile(r"^\s*\(?([A-J])[.)]\s+(\S.*?)\s*$", re.MULTILINE)
_LEADING_LETTER = re.compile(r"^\s*(?:option\s+|answer\s*:\s*)?\(?([A-Za-z])(?:[.):,]|\s|$)", re.IGNORECASE)
_HOW_MANY = re.compile(r"^\s*how\s+many\b", re.IGNORECASE)
_DIGIT_WORDS = {
    "zero": "0", "no": "0", "none": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5",
    "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10",
}  # fmt: skip
_NUMBER_WORDS = frozenset(_DIGIT_WORDS) | {"eleven", "twelve", "twenty", "hundred"}
_DIGIT = re.compile(r"\d")


def offered_options(question: str, meta: dict[str, Any]) -> tuple[str, list[str] | None]:
    """Option letters and texts a question offers: its 'A. ...' lines, else meta `choices`."""
    found = _OPTION_LINE.findall(question)
    if found:
        return "".join(k for k, _ in found), [t for _, t in found]
    choices = meta.get(C.CHOICES)
    if isinstance(choices, list):
        return C.OPTION_LETTERS[: len(choices)], [str(c) for c in choices]
    return "", None


def chosen_letter(answer: str, letters: str, choices: list[str] | None) -> str | None:
    """The option an answer picks: a leading letter, or the text of an option; None when neither."""
    text = (final_answer(answer) or answer).strip()
    m = _LEADING_LETTER.match(text)
    if m and (len(text) <= 3 or m.group(1).isupper()):
        return m.group(1).upper()
    if choices:
        norm = normalize_answer(text)
        for i, c in enumerate(choices):
            if norm == normalize_answer(str(c)) and i < len(letters):
                return letters[i]
    return None


def has_number(text: str) -> bool:
    return bool(_DIGIT.search(text)) or any(w in _NUMBER_WORDS for w in T.repetition_words(text))


def _units(text: str) -> int:
    """Words, counting each CJK character as one (Chinese has no spaces to split on)."""
    return T.word_count(_CJK.sub(" ", text)) + len(_CJK.findall(text))


class TeacherParams(OpParams):
    refusals: bool = Field(default=True, description="Drop answers that refuse (built-in patterns).")
    refusal_patterns: list[str] = Field(
        default_factory=list, description="Extra refusal regexes (case-insensitive)."
    )
    languages: list[str] | None = Field(
        default=["en"],
        description="Answer languages to keep (ISO 639-1); meta `language` overrides per sample; null: off.",
    )
    language_min_words: int = Field(
        default=4, ge=1, description="Skip language id on shorter answers (one-word answers mislead it)."
    )
    language_min_confidence: float = Field(
        default=0.5, ge=0, le=1, description="Drop for language only when fastText is this sure."
    )
    choices: bool = Field(
        default=True, description="Multiple choice: the answer must pick an offered option."
    )
    numbers: bool = Field(default=True, description="'How many' questions: the answer must contain a number.")


@register
class TeacherBehaviour(Operator):
    """Abnormal teacher behaviour: refusals, answers in the wrong language, invalid option letters,
    count questions answered without a number."""

    name = "teacher_behaviour"
    kind = "filter"
    Params = TeacherParams
    requires = _NEEDS

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        p = self.params
        assert isinstance(p, TeacherParams)
        self._refusal = re.compile("|".join([*REFUSAL_PATTERNS, *p.refusal_patterns]), re.IGNORECASE)

    def provides(self) -> tuple[str, ...]:
        return ("answer_lang", "answer_lang_confidence", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("answer_lang_confidence",)

    def _why(self, conv: list[Message], meta: dict[str, Any], lang_out: list[Any]) -> str | None:
        p = self.params
        assert isinstance(p, TeacherParams)
        pairs = C.turns(conv)
        answers = C.assistant_texts(conv)
        if p.refusals and any(self._refusal.search(a.replace("’", "'")) for a in answers):
            return "refusal"
        wanted = meta.get(C.LANGUAGE)
        allowed = {str(wanted)} if isinstance(wanted, str) and wanted else set(p.languages or ())
        for a in answers:
            if _units(a) < p.language_min_words:
                continue
            lang, conf = T.detect_language(a)
            lang_out[:] = [lang, conf]
            if allowed and lang not in allowed and conf >= p.language_min_confidence:
                return f"language:{lang}"
        for k, (question, answer) in enumerate(pairs):
            letters, options = offered_options(question, meta if k == 0 else {})
            if p.choices and letters:
                picked = chosen_letter(answer, letters, options)
                if picked is None or picked not in letters:
                    return "format:invalid_choice"
            counting = _HOW_MANY.search(question) or (k == 0 and meta.get(C.KIND) == "count")
            if p.numbers and counting and not letters and not has_number(final_answer(answer) or answer):
                return "format:missing_number"
        return None

    def process(self, batch: pa.Table) -> pa.Table:
        convs, metas = C.conversations(batch), C.meta(batch)
        n = batch.num_rows
        langs: list[str | None] = [None] * n
        confs = np.full(n, np.nan, np.float32)
        keep = np.ones(n, dtype=bool)
        reasons: list[str | None] = [None] * n
        for i, (conv, meta) in enumerate(zip(convs, metas, strict=True)):
            lang_out: list[Any] = []
            reasons[i] = self._why(conv, meta, lang_out)
            keep[i] = reasons[i] is None
            if lang_out:
                langs[i], confs[i] = lang_out[0], lang_out[1]
        batch = set_column(batch, "answer_lang", pa.array(langs, pa.string()))
        batch = set_column(batch, "answer_lang_confidence", pa.array(confs))
        return mark(batch, keep, reasons)


# --- agreement with the short answer ---------------------------------------------------------------

_TOKEN = re.compile(r"[^\W_]+")


def _tokens(text: str, numeric: bool) -> list[str]:
    toks = _TOKEN.findall(text.lower())
    return [_DIGIT_WORDS.get(t, t) for t in toks] if numeric else toks


def answers_agree(answer: str, short: str, choices: list[str] | None = None, mode: str = "auto") -> bool:
    """Whether `answer` states `short`: its `Answer:` line or the whole text, normalised
    (`vlm_prompts.normalize_answer`); in `auto` mode a sentence also agrees when it contains the short
    answer as whole words (yes/no: as its first word; an option letter: as its leading letter)."""
    stated = final_answer(answer)
    text = stated if stated is not None else answer
    want, got = normalize_answer(short), normalize_answer(text)
    if got == want:
        return True
    if mode == "exact":
        return False
    if len(want) == 1 and want.isalpha():  # an option letter
        letters = C.OPTION_LETTERS[: len(choices)] if choices else C.OPTION_LETTERS
        return chosen_letter(text, letters, choices) == want.upper()
    numeric = want.isdigit()
    toks, need = _tokens(text, numeric), _tokens(want, numeric)
    if not toks or not need:
        return False
    if want in ("yes", "no"):
        return toks[0] == want
    k = len(need)
    return any(toks[i : i + k] == need for i in range(len(toks) - k + 1))


class AgreementParams(OpParams):
    mode: str = Field(
        default="auto",
        pattern="^(auto|exact)$",
        description="exact: the normalised answer must equal the short answer; auto: a sentence may "
        "contain it.",
    )


@register
class AnswerAgreement(Operator):
    """The final answer (its `Answer:` line for reasoning, else the whole answer) must agree with the
    sample's ground-truth `short_answer` in meta; samples without one are left alone."""

    name = "answer_agreement"
    kind = "filter"
    Params = AgreementParams
    requires = _NEEDS

    def provides(self) -> tuple[str, ...]:
        return ("answer_agrees", "keep", "reason")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, AgreementParams)
        convs, metas = C.conversations(batch), C.meta(batch)
        n = batch.num_rows
        agrees: list[bool | None] = [None] * n
        keep = np.ones(n, dtype=bool)
        for i, (conv, meta) in enumerate(zip(convs, metas, strict=True)):
            short = meta.get(C.SHORT_ANSWER)
            pairs = C.turns(conv)
            if short is None or not pairs:
                continue
            choices = meta.get(C.CHOICES)
            agrees[i] = answers_agree(
                pairs[-1][1], str(short), choices if isinstance(choices, list) else None, p.mode
            )
            keep[i] = agrees[i]
        batch = set_column(batch, "answer_agrees", pa.array(agrees, pa.bool_()))
        return mark(batch, keep, [None if k else "answer_mismatch" for k in keep])
