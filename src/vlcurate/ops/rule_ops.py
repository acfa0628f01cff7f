"""DataComp's basic rules as one operator: caption length and image size, from columns a score table
already has (`text`, `width`, `height`) or, for samples, from the image header."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, append_reasons, mark
from vlcurate.ops.registry import register
from vlcurate.stats import text as T
from vlcurate.stats.image import read_header

# DataComp's `basic_filter` (baselines/apply_filter.py): caption > 2 words and > 5 characters,
# shorter side >= 200 px, aspect ratio (long/short side) <= 3. Its English check (fastText) is the
# `language` operator.
BASIC_MIN_WORDS = 3
BASIC_MIN_CHARS = 6
BASIC_MIN_SIDE = 200
BASIC_MAX_ASPECT = 3.0


class BasicRulesParams(OpParams):
    min_words: int | None = Field(
        default=BASIC_MIN_WORDS, ge=0, description="Drop captions with fewer words."
    )
    min_chars: int | None = Field(
        default=BASIC_MIN_CHARS, ge=0, description="Drop captions with fewer characters."
    )
    min_side: int | None = Field(
        default=BASIC_MIN_SIDE, ge=0, description="Drop images whose shorter side is below this."
    )
    max_aspect: float | None = Field(
        default=BASIC_MAX_ASPECT, ge=1, description="Drop images with long/short side above this."
    )
    missing_size: Literal["drop", "keep"] = Field(
        default="drop",
        description="Rows whose size is unknown under a size rule: drop (missing:size) or keep.",
    )


@register
class DatacompBasic(Operator):
    """DataComp's basic rules: caption > 2 words and > 5 characters, shorter side >= 200, aspect <= 3.

    Each rule can be changed or turned off (null). Every failing rule of a row is listed
    (`missing:text`, `words<3`, `chars<6`, `missing:size`, `min_side<200`, `aspect>3`); the first is its
    reason. Sizes come from `width`/`height` columns when the input has them, else the image header.
    """

    name = "datacomp_basic"
    kind = "filter"
    Params = BasicRulesParams

    def _text_rules(self) -> bool:
        p = self.params
        assert isinstance(p, BasicRulesParams)
        return p.min_words is not None or p.min_chars is not None

    def _size_rules(self) -> bool:
        p = self.params
        assert isinstance(p, BasicRulesParams)
        return p.min_side is not None or p.max_aspect is not None

    def required_columns(self) -> tuple[str, ...]:
        return ("text",) if self._text_rules() else ()

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, BasicRulesParams)
        n = batch.num_rows
        checks: list[tuple[str, np.ndarray]] = []
        if self._text_rules():
            text = batch.column("text")
            null = np.asarray(text.is_null(), dtype=bool)
            checks.append(("missing:text", null))
            if p.min_words is not None:
                checks.append((f"words<{p.min_words}", ~null & (T.word_counts(text) < p.min_words)))
            if p.min_chars is not None:
                chars = np.asarray(pc.fill_null(pc.utf8_length(text), 0), dtype=np.int64)
                checks.append((f"chars<{p.min_chars}", ~null & (chars < p.min_chars)))
        if self._size_rules():
            w, h = _sizes(batch)
            missing = np.isnan(w) | np.isnan(h)
            checks.append(("missing:size", missing if p.missing_size == "drop" else np.zeros(n, dtype=bool)))
            short, long = np.fmin(w, h), np.fmax(w, h)
            if p.min_side is not None:
                with np.errstate(invalid="ignore"):
                    checks.append((f"min_side<{p.min_side}", ~missing & (short < p.min_side)))
            if p.max_aspect is not None:
                with np.errstate(divide="ignore", invalid="ignore"):  # 0/0 and x/0 fail: not (a <= R)
                    checks.append((f"aspect>{p.max_aspect:g}", ~missing & ~(long / short <= p.max_aspect)))
        if not checks:
            return mark(batch, np.ones(n, dtype=bool), [None] * n)
        fails = np.stack([f for _, f in checks], axis=1)
        labels = np.array([lbl for lbl, _ in checks], dtype=object)
        any_fail = np.asarray(np.any(fails, axis=1), dtype=bool)
        first_col = np.argmax(fails, axis=1)
        first: list[str | None] = [
            str(labels[c]) if f else None for c, f in zip(first_col, any_fail, strict=True)
        ]
        out = mark(batch, ~any_fail, first, listed=np.zeros(n, dtype=bool))
        if "reasons" in out.column_names:  # every failing rule, in order
            _, cols = np.nonzero(fails)
            offsets = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(fails.sum(axis=1), out=offsets[1:])
            out = append_reasons(
                out, pa.ListArray.from_arrays(pa.array(offsets), pa.array(list(labels[cols]), pa.string()))
            )
        return out


def _sizes(batch: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """Width and height per row (NaN where unknown): the columns, else the image headers."""
    names = batch.column_names
    if "width" in names and "height" in names:
        w, h = (
            np.asarray(pc.fill_null(batch.column(c).cast(pa.float64()), np.nan), dtype=np.float64)
            for c in ("width", "height")
        )
        unknown = ~(w > 0) | ~(h > 0)  # `image_quality` writes -1 for an image it could not read
        return np.where(unknown, np.nan, w), np.where(unknown, np.nan, h)
    n = batch.num_rows
    w, h = np.full(n, np.nan), np.full(n, np.nan)
    if "image" in names:
        for i, data in enumerate(batch.column("image").to_pylist()):
            hdr = read_header(data)
            if hdr.width and hdr.height:
                w[i], h[i] = hdr.width, hdr.height
    return w, h
