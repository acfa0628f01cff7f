"""`vlcurate filter`: keep image-caption pairs by score (threshold or exact global top fraction) and
DataComp's basic rules, writing a DataComp subset, per-uid decisions and a report.

Importable without the CLI: `run_filter(scores, out_dir, FilterConfig(...)) -> FilterResult`.
"""

from __future__ import annotations

from vlcurate.filtering.config import FilterConfig, FilterResult, RuleSettings
from vlcurate.filtering.errors import FilterInputError
from vlcurate.filtering.run import DECISIONS_SCHEMA, run_filter

__all__ = [
    "DECISIONS_SCHEMA",
    "FilterConfig",
    "FilterInputError",
    "FilterResult",
    "RuleSettings",
    "run_filter",
]
