"""Operators on a numeric column: keep by threshold, or the exact global top fraction."""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from vlcurate.ops.base import Operator, OpParams, apply_bounds, from_source, keep_mask, mark, numeric
from vlcurate.ops.exact_cut import ExactCut
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
        # a value the source rejected or never made is not judged again in `reasons`
        return mark(batch, keep, reasons, listed=np.isfinite(v) & ~from_source(batch))


class TopFractionParams(OpParams):
    column: str = Field(default="clip_score", description="The numeric column to rank by.")
    fraction: float = Field(
        gt=0, le=1, description="Share of the eligible pairs to keep, over the whole dataset."
    )
    among: Literal["all", "kept"] = Field(
        default="all",
        description="Rank over every loaded pair with a value (DataComp: a top-30% cut intersected with "
        "other filters) or only over pairs earlier steps kept.",
    )
    memory_budget_mb: float = Field(
        default=2048.0,
        gt=0,
        description="Hold the values in memory (one pass) up to this size, else cut in bounded memory.",
    )
    bounded: bool = Field(
        default=False,
        description="Always cut in bounded memory: a histogram pass and a pass over the bin holding the "
        "cut (same exact result).",
    )
    bins: int = Field(default=2**20, ge=16, description="Histogram bins of the bounded mode.")
    collect_cap: int = Field(
        default=2**20, ge=1, description="Most values the bounded mode holds at once (else a finer pass)."
    )


@register
class TopFraction(Operator):
    """Keep the exact global top `fraction` by `column`: k = ceil(F*N), ties at the cut all kept."""

    name = "top_fraction"
    kind = "global"
    Params = TopFractionParams

    def __init__(self, params: OpParams | None = None) -> None:
        super().__init__(params)
        self.cut = self._new_cut()

    def _new_cut(self) -> ExactCut:
        p = self.params
        assert isinstance(p, TopFractionParams)
        return ExactCut(
            p.fraction,
            budget_bytes=p.memory_budget_mb * 2**20,
            bounded=p.bounded,
            n_bins=p.bins,
            collect_cap=p.collect_cap,
        )

    @property
    def threshold(self) -> float:
        """The cut (inf when nothing is eligible, so nothing is kept)."""
        return self.cut.threshold if self.cut.threshold is not None else float("inf")

    def required_columns(self) -> tuple[str, ...]:
        return (self.params.column,)  # type: ignore[attr-defined]

    def reads_dropped(self) -> tuple[str, ...]:
        p = self.params
        assert isinstance(p, TopFractionParams)
        return (p.column,) if p.among == "all" else ()

    def fingerprint(self) -> dict[str, object]:
        fp = super().fingerprint()
        params = dict(fp["params"])
        for k in ("memory_budget_mb", "bounded", "bins", "collect_cap"):  # how the cut is found, not what
            params.pop(k, None)
        return {**fp, "params": params}

    def _eligible(self, batch: pa.Table) -> np.ndarray:
        p = self.params
        assert isinstance(p, TopFractionParams)
        v = numeric(batch, p.column)
        ok = np.isfinite(v) & ~from_source(batch)
        if p.among == "kept":
            ok &= keep_mask(batch)
        return v[ok]

    def observe(self, batch: pa.Table) -> None:
        if self.cut.phase == "done":  # a new decision (a second run of the same operator)
            self.cut = self._new_cut()
        self.cut.feed(self._eligible(batch))

    def finalize(self) -> None:
        self.cut.end_pass()

    def another_pass(self) -> bool:
        return self.cut.needs_pass

    def process(self, batch: pa.Table) -> pa.Table:
        p = self.params
        assert isinstance(p, TopFractionParams)
        v = numeric(batch, p.column)
        t = self.threshold
        keep = np.isfinite(v) & (v >= t)
        return mark(
            batch,
            keep,
            f"{p.column}<{t:.6g} (top {p.fraction:g})",
            listed=np.isfinite(v) & ~from_source(batch),
        )
