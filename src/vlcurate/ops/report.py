"""The report of a recipe run: per step, how many pairs it saw, kept and dropped and why, with a
histogram of each statistic it computed (kept vs dropped), the shards and pairs that failed, and
which stages this run computed or reused, as report.json, PNGs and one HTML page."""

from __future__ import annotations

import html
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.pipeline.run_dir import write_json_atomic


def plot_stat(path: Path, values: np.ndarray, keep: np.ndarray, title: str) -> None:
    """Overlaid histograms of a statistic for the pairs kept and dropped at the end of the recipe."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = np.isfinite(values)
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=100)
    try:
        if ok.any():
            lo, hi = float(values[ok].min()), float(values[ok].max())
            bins = np.linspace(lo, hi if hi > lo else lo + 1, 60).tolist()
            ax.hist(
                values[ok & keep],
                bins=bins,
                alpha=0.75,
                label=f"kept ({int((ok & keep).sum()):,})",
                color="#2a7",
            )
            ax.hist(
                values[ok & ~keep],
                bins=bins,
                alpha=0.6,
                label=f"dropped ({int((ok & ~keep).sum()):,})",
                color="#c44",
            )
            ax.legend(loc="upper left", fontsize=8)
        else:
            ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("pairs")
        fig.tight_layout()
        fig.savefig(path)
    finally:
        plt.close(fig)


def write_report(
    out: Path,
    *,
    recipe_path: str,
    source: dict[str, Any],
    steps: list[dict[str, Any]],
    rows: int,
    kept: int,
    reasons: Counter[str],
    stats: dict[str, tuple[np.ndarray, np.ndarray]],
    failures: dict[str, Any] | None = None,
    stages: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write report.json, plots/<column>.png and report.html under `out`; returns the JSON."""
    plots = out / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    plotted = {}
    for column, (values, keep) in stats.items():
        png = plots / f"{column}.png"
        plot_stat(png, values, keep, column)
        ok = values[np.isfinite(values)]
        plotted[column] = {
            "plot": f"plots/{column}.png",
            "count": len(ok),
            "mean": float(ok.mean()) if len(ok) else None,
            "quantiles": {f"q{int(q * 100):02d}": float(np.quantile(ok, q)) for q in (0.05, 0.5, 0.95)}
            if len(ok)
            else {},
        }
    report = {
        "recipe": recipe_path,
        "source": source,
        "rows": rows,
        "kept": kept,
        "dropped": rows - kept,
        "steps": steps,
        "drop_reasons": dict(reasons.most_common(50)),
        "statistics": plotted,
        "failures": failures or {"failed_shards": {}, "failed_pairs": 0},
        "stages": stages or [],
    }
    write_json_atomic(out / "report.json", report)
    (out / "report.html").write_text(_html(report), encoding="utf-8")
    return report


def _html(r: dict[str, Any]) -> str:
    e = html.escape
    rows = "".join(
        f"<tr><td>{e(s['op'])}</td><td>{s['saw']:,}</td><td>{s['kept']:,}</td><td>{s['dropped']:,}</td>"
        f"<td>{s['seconds']:.2f}</td></tr>"
        for s in r["steps"]
    )
    reasons = "".join(f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in r["drop_reasons"].items())
    f = r["failures"]
    failed = "".join(f"<tr><td>{e(k)}</td><td>{e(v)}</td></tr>" for k, v in f["failed_shards"].items())
    failures = (
        f"<h2>Failures</h2><p>{f['failed_pairs']:,} pairs could not be loaded; "
        f"{len(f['failed_shards']):,} shards failed or were cut short</p>"
        f"<table><tr><th>shard</th><th>error</th></tr>{failed}</table>"
        if f["failed_pairs"] or f["failed_shards"]
        else ""
    )
    figs = "".join(
        f"<figure><img src='{e(v['plot'])}' alt='{e(k)}'>"
        f"<figcaption>{e(k)}: {v['count']:,} values</figcaption></figure>"
        for k, v in r["statistics"].items()
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>vlcurate run report</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}}
table{{border-collapse:collapse}}td,th{{border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}
figure{{display:inline-block;margin:8px}}img{{max-width:520px}}</style></head><body>
<h1>{e(r["recipe"])}</h1><p>{r["kept"]:,} of {r["rows"]:,} pairs kept ({r["dropped"]:,} dropped)</p>
<h2>Steps</h2><table><tr><th>step</th><th>saw</th><th>kept</th><th>dropped</th><th>seconds</th></tr>{rows}</table>
{failures}<h2>Why pairs were dropped</h2><table><tr><th>reason</th><th>pairs</th></tr>{reasons}</table>
<h2>Statistics</h2>{figs}</body></html>
"""
