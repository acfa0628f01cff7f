"""Run summary of a recaption run: merged per-shard markers, score distributions before and after,
and a histogram plot (matplotlib, written without a display)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from vlcurate.pipeline.score_stats import HIST_BINS, quantiles_from_histogram, score_histogram
from vlcurate.recaption.iterate import RETRY_STATUSES

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
    counts: Counter[str] = Counter()
    origins: Counter[str] = Counter()
    hb = np.zeros(HIST_BINS, dtype=np.int64)
    ha = np.zeros(HIST_BINS, dtype=np.int64)
    paired, sb, sa, requests = 0, 0.0, 0.0, 0
    for m in markers:
        counts.update(m.get("counts", {}))
        origins.update(m.get("chosen_origin", {}))
        hb += np.asarray(m.get("hist_before") or np.zeros(HIST_BINS), dtype=np.int64)
        ha += np.asarray(m.get("hist_after") or np.zeros(HIST_BINS), dtype=np.int64)
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
        "quantiles_before": quantiles_from_histogram(hb, QUANTILES),
        "quantiles_after": quantiles_from_histogram(ha, QUANTILES),
        "requests_for_rows": requests,
        "_hist_before": hb,
        "_hist_after": ha,
    }


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


def plot_histograms(hist_before: np.ndarray, hist_after: np.ndarray, path: Path, bins: int = 80) -> Path:
    """Before/after score histograms in one PNG, binned coarser than the stored 0.001-wide bins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    nonzero = np.flatnonzero((hist_before + hist_after) > 0)
    edges = np.linspace(-1.0, 1.0, HIST_BINS + 1)
    lo, hi = (edges[nonzero[0]], edges[nonzero[-1] + 1]) if len(nonzero) else (-1.0, 1.0)
    centres = (edges[:-1] + edges[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    for hist, label, colour in ((hist_before, "original", "tab:gray"), (hist_after, "chosen", "tab:blue")):
        ax.hist(centres, bins=bins, range=(lo, hi), weights=hist, alpha=0.55, label=label, color=colour)
    ax.set_xlabel("image-text score")
    ax.set_ylabel("pairs")
    ax.set_title("vlcurate recaption: scores before and after")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
