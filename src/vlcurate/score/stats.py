"""Per-shard statistics that merge across shards in constant memory (for the run summary)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

HIST_BINS = 2000  # 0.001-wide bins over [-1, 1]: quantiles to within 0.001


def score_histogram(scores: np.ndarray) -> list[int]:
    """Counts of valid scores in fixed bins over [-1, 1]."""
    valid = scores[np.isfinite(scores)]
    hist, _ = np.histogram(np.clip(valid, -1.0, 1.0), bins=HIST_BINS, range=(-1.0, 1.0))
    return [int(x) for x in hist]


def quantiles_from_histogram(hist: np.ndarray, qs: tuple[float, ...]) -> dict[str, float | None]:
    """Approximate quantiles (bin centres, to 4 decimals) from a merged histogram over [-1, 1]."""
    from vlcurate.base.report import Histogram

    h = Histogram(-1.0, 1.0, bins=HIST_BINS)
    h.add_counts(np.asarray(hist, dtype=np.int64), "score")
    return {k: None if v is None else round(v, 4) for k, v in h.quantiles("score", qs).items()}


def merge_markers(markers: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts by status and score quantiles over every finished shard."""
    counts: Counter[str] = Counter()
    hist = np.zeros(HIST_BINS, dtype=np.int64)
    duplicates = 0
    partial = []
    for m in markers:
        counts.update(m.get("counts", {}))
        h = m.get("histogram")
        if h and len(h) == HIST_BINS:
            hist += np.asarray(h, dtype=np.int64)
        duplicates += int(m.get("duplicates", 0))
        if m.get("error"):
            partial.append({"shard": m["shard"], "error": m["error"]})
    qs = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99)
    return {
        "pairs": int(sum(counts.values())),
        "counts_by_status": dict(sorted(counts.items())),
        "duplicate_uids_dropped": duplicates,
        "score_quantiles": quantiles_from_histogram(hist, qs),
        "partial_shards": partial,
    }


def run_problems(summary: dict[str, Any]) -> list[str]:
    """What keeps a scoring run from being complete, one line each (empty: everything done).

    A shard is not done when it could not be read at all (or was not reached), partial when it
    broke part way (its complete samples are scored), and a pair failed when it has no score:
    any status but ok (unreadable or missing image, no caption, a failed download).
    """
    out: list[str] = []
    missing = list(summary.get("shards_missing") or [])
    if missing:
        errors = {f["shard"]: f["error"] for f in (summary.get("this_run") or {}).get("failed_shards") or []}
        shown = "; ".join(f"{m}: {errors[m]}" if m in errors else m for m in missing[:3])
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        out.append(
            f"{len(missing)} of {summary.get('shards_total')} shards not done ({shown}{more}); "
            "a re-run tries them again"
        )
    partial = list(summary.get("partial_shards") or [])
    if partial:
        shown = "; ".join(f"{p['shard']}: {p['error']}" for p in partial[:3])
        more = f" and {len(partial) - 3} more" if len(partial) > 3 else ""
        out.append(
            f"{len(partial)} shards only partly read ({shown}{more}); "
            "a re-run reads them again once their files change"
        )
    failed = {k: int(v) for k, v in (summary.get("counts_by_status") or {}).items() if k != "ok" and v}
    if failed:
        by = ", ".join(f"{k} {v:,}" for k, v in sorted(failed.items(), key=lambda kv: (-kv[1], kv[0])))
        out.append(
            f"{sum(failed.values()):,} of {int(summary.get('pairs') or 0):,} pairs have no score ({by})"
        )
    return out


def write_score_report(root: Path, summary: dict[str, Any], markers: list[dict[str, Any]]) -> None:
    """report.md, report.html and plots/score.png of a scoring run, by the shared report writer:
    pairs per status and the score histogram, merged shard by shard from the markers (their fixed
    bins), so it costs the same however many pairs. summary.json stays the run's JSON."""
    from vlcurate.base.report import Histogram, ReportData, write_report

    hist = Histogram(-1.0, 1.0, bins=HIST_BINS)
    for m in markers:
        h = m.get("histogram")
        hist.add_counts(h if h and len(h) == HIST_BINS else [0] * HIST_BINS, "score")
    errors = {f["shard"]: f["error"] for f in (summary.get("this_run") or {}).get("failed_shards") or []}
    failed = {m: str(errors.get(m, "not done")) for m in summary.get("shards_missing") or []}
    failed |= {p["shard"]: f"partly read: {p['error']}" for p in summary.get("partial_shards") or []}
    model = summary.get("model") or {}
    this_run = summary.get("this_run") or {}
    notes = [
        f"model: {model.get('name')} ({model.get('precision')}, {model.get('device')})",
        f"shards: {summary.get('shards_done')}/{summary.get('shards_total')} done",
    ]
    if this_run.get("pairs_this_run"):
        notes.append(
            f"this run: {this_run['pairs_this_run']:,} pairs at {this_run.get('pairs_per_s')} pairs/s"
        )
    data = ReportData(
        title="vlcurate score",
        command="score",
        inputs=summary.get("input"),
        rows=int(summary.get("pairs") or 0),
        histograms={"score": hist},
        failed_shards=failed,
        failed_pairs=int(summary.get("pairs_failed") or 0),
        warnings=list(summary.get("warnings") or []) + list(summary.get("problems") or []),
        counts={"pairs by status": dict(summary.get("counts_by_status") or {})},
        notes=notes,
    )
    write_report(root, data, formats=("md", "html"))
