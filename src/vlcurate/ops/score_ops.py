"""Operators on a numeric column: keep by threshold, or the exact global top fraction."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.filtering.threshold import kth_largest, target_count
from vlcurate.ops.base import Operator, OpParams, apply_bounds, keep_mask, mark, numeric
from vlcurate.ops.registry import register


class ThresholdParams(OpParams):
    column: str = Field(default="clip_score", description="The numeric column to compare.")
    min: float | None = Field(default=None, description="Keep rows with value >= min.")
    max: float | None = Field(default=None, description="Keep rows with value <= max.")


@register
class ScoreThreshold(Operator):
    """Keep pairs whose `column` is within [min, max]; missing values (NaN/null) are dropped."""

    name = "score_threshold"
    kind = "filter"
    Params = ThresholdParams

    def required_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, ThresholdParams)
        v = numeric(batch, p.column)
        keep = np.isfinite(v)
        reasons: list[str | None] = [None if k else f"no {p.column}" for k in keep]
        apply_bounds(v, p.min, p.max, p.column, keep, reasons)
        return mark(batch, keep, reasons)


class TopFractionParams(OpParams):
    column: str = Field(default="clip_score", description="The numeric column to rank by.")
    fraction: float = Field(
        gt=0, le=1, description="Share of the eligible pairs to keep, over the whole dataset."
    )
    among: Literal["all", "kept"] = Field(
        default="all",
        description="Rank over every pair with a value (DataComp: a top-30% cut intersected with other "
        "filters) or only over pairs earlier steps kept.",
    )


@register
class TopFraction(Operator):
    """Keep the exact global top `fraction` by `column` (ties at the cut all kept, as `vlcurate filter`)."""

    name = "top_fraction"
    kind = "global"
    Params = TopFractionParams

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self._seen: list[np.ndarray] = []
        self.threshold: float = math.inf

    def required_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def reads_dropped(self) -> tuple[str, ...]:
        p = self.params
        assert isinstance(p, TopFractionParams)
        return (p.column,) if p.among == "all" else ()

    def observe(self, batch: pa.Table) -> None:
        p = self.params
        assert isinstance(p, TopFractionParams)
        v = numeric(batch, p.column)
        ok = np.isfinite(v) if p.among == "all" else np.isfinite(v) & keep_mask(batch)
        self._seen.append(v[ok])

    def finalize(self) -> None:
        p = self.params
        assert isinstance(p, TopFractionParams)
        scores = np.concatenate(self._seen) if self._seen else np.zeros(0)
        self._seen = []
        k = target_count(p.fraction, len(scores))
        self.threshold = kth_largest(scores, k) if k > 0 else math.inf

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, TopFractionParams)
        v = numeric(batch, p.column)
        keep = np.isfinite(v) & (v >= self.threshold)
        return mark(batch, keep, f"{p.column}<{self.threshold:.6g} (top {p.fraction:g})")
