"""Operators on a numeric column: keep by threshold, or the exact global top fraction."""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.filtering.threshold import kth_largest, target_count
from vlcurate.ops.base import Operator, OpParams, mark
from vlcurate.ops.registry import register


def _values(batch: pa.Table, column: str) -> np.ndarray:
    return np.asarray(batch.column(column).to_numpy(zero_copy_only=False), dtype=np.float64)


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
        v = _values(batch, p.column)
        keep = np.isfinite(v)
        reasons = np.where(keep, "", f"no {p.column}").astype(object)
        if p.min is not None:
            low = keep & (v < p.min)
            reasons[low] = f"{p.column}<{p.min:g}"
            keep &= ~low
        if p.max is not None:
            high = keep & (v > p.max)
            reasons[high] = f"{p.column}>{p.max:g}"
            keep &= ~high
        return mark(batch, keep, [r or None for r in reasons])


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

    def observe(self, batch: pa.Table) -> None:
        p = self.params
        assert isinstance(p, TopFractionParams)
        v = _values(batch, p.column)
        ok = np.isfinite(v) if p.among == "all" else np.isfinite(v) & _values_keep(batch)
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
        v = _values(batch, p.column)
        keep = np.isfinite(v) & (v >= self.threshold)
        return mark(batch, keep, f"{p.column}<{self.threshold:.6g} (top {p.fraction:g})")


def _values_keep(batch: pa.Table) -> np.ndarray:
    """Rows still kept by earlier steps."""
    if "keep" not in batch.column_names:
        return np.ones(batch.num_rows, dtype=bool)
    return np.asarray(batch.column("keep").to_numpy(zero_copy_only=False), dtype=bool)
