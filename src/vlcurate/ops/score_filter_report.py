"""The human side of a filter run: report.json, report.md and score_hist.png.

The histogram plot is drawn from the fine histogram the run already keeps (never from the raw
scores), so it costs the same in both memory modes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
LANGUAGE_NOTE = (
    "DataComp's English check (fastText) is not applied by `vlcurate filter`; it is the `language` "
    "operator of `vlcurate run` (see recipes/datacomp_basic.yaml)"
)


def write_json(path: Path, data: dict[str, Any]) -> None:
    """JSON written to a temporary name then renamed, so a reader never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def plot_histogram(path: Path, fine_hist: np.ndarray, threshold: float | None, kept: int, total: int) -> None:
    """Histogram of the valid scores with the cut as a vertical line and the kept share annotated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_bins = len(fine_hist)
    nz = np.flatnonzero(fine_hist)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    try:
        if len(nz):
            lo_b, hi_b = int(nz[0]), int(nz[-1]) + 1
            bars = 80
            step = max(1, -(-(hi_b - lo_b) // bars))
            starts = np.arange(lo_b, hi_b, step)
            counts = np.add.reduceat(fine_hist[lo_b:hi_b], starts - lo_b)
            w = 2.0 / n_bins
            left = -1.0 + starts * w
            ax.bar(left, counts, width=step * w, align="edge", color="#4C72B0", edgecolor="none")
        else:
            ax.text(0.5, 0.5, "no valid scores", ha="center", va="center", transform=ax.transAxes)
        if threshold is not None:
            ax.axvline(threshold, color="#C44E52", linewidth=1.5, label=f"cut {threshold:.4f}")
            ax.legend(loc="upper left")
        share = kept / total if total else 0.0
        ax.annotate(
            f"kept {kept:,} / {total:,} ({share:.1%})",
            xy=(0.98, 0.95),
            xycoords="axes fraction",
            ha="right",
            va="top",
            bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"},
        )
        ax.set_xlabel("score")
        ax.set_ylabel("pairs")
        ax.set_title("score distribution (status ok, valid scores)")
        fig.tight_layout()
        tmp = path.with_name(path.name + ".tmp.png")
        fig.savefig(tmp, format="png")
        tmp.replace(path)
    finally:
        plt.close(fig)


def render_markdown(r: dict[str, Any]) -> str:
    """A short human summary of report.json."""
    lines = [
        "# vlcurate filter report",
        "",
        f"- inputs: {len(r['inputs']['files'])} file(s), form `{r['inputs']['form']}`, "
        f"score column `{r['inputs']['score_column']}`",
        f"- selection: {r['selection']['description']}",
        f"- threshold used: {r['threshold'] if r['threshold'] is not None else 'none'}",
        f"- kept **{r['kept']:,}** of {r['total']:,} rows ({r['kept_share']:.2%}); "
        f"subset size {r['subset_size']:,}",
        f"- memory mode: {'bounded (streaming, exact)' if r['bounded_memory'] else 'in memory'}",
        f"- language: {LANGUAGE_NOTE}",
        "",
        "| reason (first failing) | rows |",
        "|---|---:|",
    ]
    lines.append(f"| (kept) | {r['kept']:,} |")
    for reason, n in r["counts_by_reason"].items():
        lines.append(f"| `{reason}` | {n:,} |")
    if r.get("quantiles"):
        lines += [
            "",
            "Score quantiles ("
            + r["quantiles_method"]
            + "): "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["quantiles"].items()),
        ]
    if r.get("warnings"):
        lines += ["", "Warnings:"] + [f"- {w}" for w in r["warnings"]]
    lines += ["", "![scores](score_hist.png)", ""]
    return "\n".join(lines)
