"""Run summary of a recaption run: merged per-shard markers and the score distributions before and
after, as summary.json fields and a report (report.md, report.html and the before/after plot) by
the shared writer in `vlcurate.base.report`."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.base.report import Histogram, ReportData, write_report
from vlcurate.recaption.iterate import RETRY_STATUSES
from vlcurate.score.stats import HIST_BINS, score_histogram

QUANTILES = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
# Final outcomes of a pair: a chosen caption, or a model that answered but had nothing usable.
DONE_STATUSES = frozenset({"ok", "no_caption"})


def shard_stats(table: pa.Table) -> dict[str, Any]:
    """What one shard's marker records: counts, histograms and sums for the means."""
    before = np.asarray(table.column("original_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    after = np.asarray(table.column("chosen_score").to_numpy(zero_copy_only=False), dtype=np.float64)
    both = np.isfinite(before) & np.isfinite(after)
    statuses = table.column("status").to_pylist()
    origins = table.column("chosen_origin").to_pylist()
    return {
        "rows": table.num_rows,
        "counts": dict(Counter(statuses)),
        "chosen_origin": dict(Counter(origins)),
        "retry": sum(s in RETRY_STATUSES for s in statuses),
        "paired": int(both.sum()),
        "sum_before": float(before[both].sum()),
        "sum_after": float(after[both].sum()),
        "hist_before": score_histogram(before),
        "hist_after": score_histogram(after),
        "requests_for_rows": int(sum(table.column("requests").to_pylist())),
    }


def merge(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Summary fields over every shard's marker; `_histogram` (popped before the JSON is written)
    holds the before/after score histogram, the markers' fixed 0.001-wide bins merged."""
    counts: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    hist = Histogram(-1.0, 1.0, bins=HIST_BINS)
    paired, sb, sa, requests = 0, 0.0, 0.0, 0
    for m in markers:
        counts.update(m.get("counts", {}))
        origins.update(m.get("chosen_origin", {}))
        hist.add_counts(m.get("hist_before") or np.zeros(HIST_BINS), "before")
        hist.add_counts(m.get("hist_after") or np.zeros(HIST_BINS), "after")
        paired += int(m.get("paired", 0))
        sb += float(m.get("sum_before", 0.0))
        sa += float(m.get("sum_after", 0.0))
        requests += int(m.get("requests_for_rows", 0))
    pairs = int(sum(counts.values()))
    return {
        "pairs": pairs,
        "counts_by_status": dict(sorted(counts.items())),
        "chosen_origin": dict(sorted(origins.items())),
        "replaced": pairs - int(origins.get("original", 0)),
        "mean_score_before": round(sb / paired, 4) if paired else None,
        "mean_score_after": round(sa / paired, 4) if paired else None,
        "quantiles_before": _rounded(hist.quantiles("before", QUANTILES)),
        "quantiles_after": _rounded(hist.quantiles("after", QUANTILES)),
        "requests_for_rows": requests,
        "_histogram": hist,
    }


def _rounded(qs: dict[str, float | None]) -> dict[str, float | None]:
    return {k: None if v is None else round(v, 4) for k, v in qs.items()}


def run_problems(summary: dict[str, Any]) -> list[str]:
    """What keeps a recaption run from being complete, one line each (empty: everything done).

    A shard is incomplete when it broke part way or has pairs to retry (VLM errors, a spent
    budget); a pair failed when it ended with any status but ok or no_caption (those include an
    image that could not be read).
    """
    out: list[str] = []
    incomplete = list(summary.get("incomplete_shards") or [])
    if incomplete:
        shown = "; ".join(
            f"{s['shard']}: "
            + (str(s["read_error"]) if s.get("read_error") else f"{s.get('retry', 0)} to retry")
            for s in incomplete[:3]
        )
        more = f" and {len(incomplete) - 3} more" if len(incomplete) > 3 else ""
        out.append(
            f"{len(incomplete)} of {summary.get('shards_total')} shards incomplete ({shown}{more}); "
            "a re-run resumes them"
        )
    failed = {
        k: int(v) for k, v in (summary.get("counts_by_status") or {}).items() if k not in DONE_STATUSES and v
    }
    if failed:
        by = ", ".join(f"{k} {v:,}" for k, v in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(
            f"{sum(failed.values()):,} of {int(summary.get('pairs') or 0):,} pairs not recaptioned ({by})"
        )
    return out


def write_recaption_report(out: Path, summary: dict[str, Any], hist: Histogram) -> dict[str, Any]:
    """report.md, report.html and scores_before_after.png (the name it always had) from the
    summary and the merged before/after histogram; summary.json stays the run's JSON."""
    failed_pairs = sum(
        int(v) for k, v in (summary.get("counts_by_status") or {}).items() if k not in DONE_STATUSES
    )
    data = ReportData(
        title="vlcurate recaption",
        command="recaption",
        inputs=summary.get("input"),
        rows=int(summary.get("pairs") or 0),
        histograms={"scores": hist},
        failed_shards={
            str(s["shard"]): str(s.get("read_error") or f"{s.get('retry', 0)} pairs to retry")
            for s in summary.get("incomplete_shards") or []
        },
        failed_pairs=failed_pairs,
        warnings=list(summary.get("problems") or []),
        counts={
            "pairs by status": dict(summary.get("counts_by_status") or {}),
            "chosen caption from": dict(summary.get("chosen_origin") or {}),
        },
        notes=[
            f"shards: {summary.get('shards_done')}/{summary.get('shards_total')} done",
            f"captions replaced: {int(summary.get('replaced') or 0):,}",
            f"mean score: {summary.get('mean_score_before')} -> {summary.get('mean_score_after')}",
        ],
        plot_paths={"scores": "scores_before_after.png"},
    )
    return write_report(out, data, formats=("md", "html"))
