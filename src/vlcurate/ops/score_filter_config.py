"""Options and results of `vlcurate filter`, validated once at the edge.

`FilterConfig` holds every option of the command so that the CLI, the demo and other code build
the same object; `FilterResult` is what a caller needs afterwards (counts, threshold, paths).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vlcurate.ops.rule_ops import BASIC_MAX_ASPECT, BASIC_MIN_CHARS, BASIC_MIN_SIDE, BASIC_MIN_WORDS


class FilterConfig(BaseModel):
    """Every option of `vlcurate filter`; exactly one of `threshold` / `top_fraction`."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    threshold: float | None = Field(default=None, ge=-1.0, le=1.0, description="keep score >= threshold")
    top_fraction: float | None = Field(
        default=None,
        gt=0.0,
        le=1.0,
        description="keep the global top fraction (one threshold over all shards)",
    )
    fraction_of: Literal["pool", "after-rules"] = Field(
        default="pool",
        description="what the top fraction is taken of: every scored row (pool, DataComp/DFN) or "
        "only the rows that pass the caption/size rules",
    )
    score_column: str | None = Field(
        default=None,
        description="score column; default `score`, or `clip_l14_similarity_score` for DataComp metadata",
    )
    basic: bool = Field(default=False, description="DataComp's basic rules (no language check)")
    min_words: int | None = Field(default=None, ge=0)
    min_chars: int | None = Field(default=None, ge=0)
    min_side: int | None = Field(default=None, ge=0)
    max_aspect: float | None = Field(default=None, ge=1.0)
    missing_size: Literal["drop", "keep"] = Field(
        default="drop",
        description="rows without width/height when a size rule is on: drop (missing:size) or keep",
    )
    bounded_memory: bool = Field(default=False, description="force the streaming exact mode")
    memory_budget_mb: float = Field(default=2048.0, gt=0)
    overwrite: bool = False
    batch_size: int = Field(default=65_536, ge=1)
    hist_bins: int = Field(
        default=2**20, ge=16, description="histogram bins over [-1, 1] in the bounded mode"
    )
    collect_cap: int = Field(default=2**20, ge=1, description="most scores held at once by the bounded mode")
    plot: bool = True

    @model_validator(mode="after")
    def _one_selection(self) -> FilterConfig:
        if (self.threshold is None) == (self.top_fraction is None):
            raise ValueError("give exactly one of --threshold or --top-fraction")
        return self

    @property
    def rules(self) -> RuleSettings:
        """The caption/size rules in force: `--basic` defaults, overridden by individual flags."""
        b = self.basic
        return RuleSettings(
            min_words=self.min_words if self.min_words is not None else (BASIC_MIN_WORDS if b else None),
            min_chars=self.min_chars if self.min_chars is not None else (BASIC_MIN_CHARS if b else None),
            min_side=self.min_side if self.min_side is not None else (BASIC_MIN_SIDE if b else None),
            max_aspect=self.max_aspect if self.max_aspect is not None else (BASIC_MAX_ASPECT if b else None),
            missing_size=self.missing_size,
        )


@dataclass(frozen=True)
class RuleSettings:
    """Resolved rules; None means the rule is off."""

    min_words: int | None = None
    min_chars: int | None = None
    min_side: int | None = None
    max_aspect: float | None = None
    missing_size: str = "drop"

    @property
    def any_text(self) -> bool:
        return self.min_words is not None or self.min_chars is not None

    @property
    def any_size(self) -> bool:
        return self.min_side is not None or self.max_aspect is not None

    @property
    def any(self) -> bool:
        return self.any_text or self.any_size


@dataclass
class FilterResult:
    """What a filter run produced."""

    kept: int
    total: int
    threshold: float | None
    counts_by_reason: dict[str, int]
    out_dir: Path
    subset_path: Path
    decisions_path: Path
    report_json_path: Path
    report_md_path: Path
    hist_png_path: Path | None
    subset_size: int = 0
    eligible: int = 0
    target_k: int | None = None
    bounded_memory: bool = False
    input_form: str = "scores"
    score_column: str = "score"
    warnings: list[str] = field(default_factory=list)
    # Shards of the scored input that a score run did not finish (or read only in part): the subset
    # leaves their pairs out, and `vlcurate filter` exits with EXIT_PARTIAL.
    input_problems: list[str] = field(default_factory=list)
