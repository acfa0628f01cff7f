"""One report for every command (`run`, `score`, `recaption`, and `filter` next): totals, per-step
counts, drop reasons, failures and warnings, with a histogram per statistic, written as report.json,
report.md, report.html and one PNG per histogram.

Histograms are streaming and bounded: a `Histogram` holds a fixed number of bins per named series
whatever the number of rows, and per-shard histograms merge (on a fixed grid, into exactly the
histogram one pass would give), so a report after a resume costs the same as one after a full run.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.base.atomic import write_json_atomic, write_text_atomic, write_with
from vlcurate.base.html import esc, page, table

FORMATS = ("json", "md", "html")
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
DEFAULT_BINS = 2048
PLOT_BARS = 80
COLOURS = {"kept": "#2a7", "dropped": "#c44", "before": "#888", "after": "#1f77b4", "score": "#4c72b0"}


# ----- histogram ------------------------------------------------------------------------------
@dataclass
class _Series:
    counts: np.ndarray
    n: int = 0
    total: float = 0.0
    lo: float = math.inf
    hi: float = -math.inf
    nonfinite: int = 0
    integral: bool = True  # every finite value a whole number (word counts, pixel sizes)


class Histogram:
    """Counts of values in `bins` equal bins, per named series, in memory that does not grow.

    With `lo` and `hi` given the bins are fixed and values outside fall into the edge bins (scores
    in [-1, 1]). Without them the range is found from the data: bin widths are powers of two and
    the low edge a multiple of the width, so widening merges whole bins exactly (each old bin lies
    in one new bin), and two histograms always re-bin onto a common grid when merged. Exact count,
    sum, min and max are kept per series; quantiles are bin centres (within half a bin).
    """

    def __init__(self, lo: float | None = None, hi: float | None = None, *, bins: int = DEFAULT_BINS) -> None:
        if (lo is None) != (hi is None):
            raise ValueError("give both lo and hi, or neither")
        if bins < 2:
            raise ValueError("a histogram needs at least 2 bins")
        if lo is not None and hi is not None and not hi > lo:
            raise ValueError(f"hi ({hi}) must be above lo ({lo})")
        self.bins = bins
        self.fixed = lo is not None
        self.lo: float | None = lo
        self.width: float = (hi - lo) / bins if lo is not None and hi is not None else 0.0
        self.series: dict[str, _Series] = {}

    # --- shape ---
    @property
    def hi(self) -> float | None:
        return None if self.lo is None else self.lo + self.bins * self.width

    @property
    def nbytes(self) -> int:
        """Bytes held by the bins: depends on the series and bins, never on the values added."""
        return sum(s.counts.nbytes for s in self.series.values())

    def _series(self, name: str) -> _Series:
        if name not in self.series:
            self.series[name] = _Series(np.zeros(self.bins, dtype=np.int64))
        return self.series[name]

    def _fits(self, lo: float, width: float, a: float, b: float) -> bool:
        return a >= lo and b < lo + self.bins * width

    def _cover(self, a: float, b: float, min_width: float = 0.0) -> None:
        """Widen an automatic range (doubling the bin width) until [a, b] and the old range fit."""
        if self.fixed:
            return
        if self.lo is None:
            span = max(b - a, abs(a) * 1e-9, abs(b) * 1e-9, 1e-12)
            width = max(2.0 ** math.floor(math.log2(span / self.bins)), min_width)
            lo = math.floor(a / width) * width
            while not self._fits(lo, width, a, b):
                width = _doubled(width)
                lo = math.floor(a / width) * width
            self.lo, self.width = lo, width
            return
        old_lo, old_w = self.lo, self.width
        old_hi = old_lo + self.bins * old_w
        a, b = min(a, old_lo), max(b, old_hi - old_w / 2)
        width = max(old_w, min_width)
        lo = math.floor(a / width) * width
        if width == old_w and lo == old_lo and self._fits(lo, width, a, b):
            return
        while not (self._fits(lo, width, a, b) and lo + self.bins * width >= old_hi and width > old_w):
            width = _doubled(width)
            lo = math.floor(a / width) * width
        for s in self.series.values():
            s.counts = self._fold(s.counts, old_lo, old_w, lo, width)
        self.lo, self.width = lo, width

    def _fold(self, counts: np.ndarray, src_lo: float, src_w: float, lo: float, width: float) -> np.ndarray:
        """Counts on the grid (src_lo, src_w) moved onto (lo, width), a coarser aligned grid."""
        ratio = round(width / src_w)
        offset = round((src_lo - lo) / src_w)
        nz = np.flatnonzero(counts)
        out = np.zeros(self.bins, dtype=np.int64)
        np.add.at(out, np.clip((offset + nz) // ratio, 0, self.bins - 1), counts[nz])
        return out

    # --- adding ---
    def add(self, values: Iterable[float] | np.ndarray, series: str = "all") -> None:
        """Count `values` (non-finite ones are counted apart) into `series`."""
        v = np.asarray(values, dtype=np.float64).ravel()
        s = self._series(series)
        ok = np.isfinite(v)
        s.nonfinite += int(len(v) - ok.sum())
        v = v[ok]
        if not len(v):
            return
        vmin, vmax = float(v.min()), float(v.max())
        self._cover(vmin, vmax)
        assert self.lo is not None
        idx = np.clip(np.floor((v - self.lo) / self.width), 0, self.bins - 1).astype(np.int64)
        s.counts += np.bincount(idx, minlength=self.bins)
        s.n += len(v)
        s.total += float(v.sum())
        s.lo, s.hi = min(s.lo, vmin), max(s.hi, vmax)
        s.integral = s.integral and bool(np.all(v == np.floor(v)))

    def add_counts(self, counts: Sequence[int] | np.ndarray, series: str = "all") -> None:
        """Add counts already binned on this (fixed) grid, such as a score marker's histogram; the
        sum, min and max are then those of the bin centres and edges."""
        if not self.fixed or len(counts) != self.bins:
            raise ValueError(f"add_counts needs a fixed histogram of {len(counts)} bins")
        assert self.lo is not None
        c = np.asarray(counts, dtype=np.int64)
        nz = np.flatnonzero(c)
        if not len(nz):
            self._series(series)
            return
        s = self._series(series)
        s.counts += c
        s.n += int(c.sum())
        s.total += float(((self.lo + (nz + 0.5) * self.width) * c[nz]).sum())
        s.lo = min(s.lo, self.lo + int(nz[0]) * self.width)
        s.hi = max(s.hi, self.lo + (int(nz[-1]) + 1) * self.width)
        s.integral = False

    def merge(self, other: Histogram) -> Histogram:
        """Add `other` into this histogram (in place; returns self), for per-shard histograms after
        a resume. On a fixed grid the result equals one pass over the same values; on found ranges
        the counts, sums, min and max are equal and the bins may be coarser (quantiles within a bin)."""
        if other.bins != self.bins or other.fixed != self.fixed:
            raise ValueError("merge needs histograms of the same kind and number of bins")
        if self.fixed and (other.lo != self.lo or other.width != self.width):
            raise ValueError(f"fixed ranges differ: [{self.lo}, {self.hi}] and [{other.lo}, {other.hi}]")
        if other.lo is None:  # nothing binned yet: only series and non-finite counts
            for name, o in other.series.items():
                self._series(name).nonfinite += o.nonfinite
            return self
        assert other.hi is not None
        self._cover(other.lo, other.hi - other.width / 2, min_width=other.width)
        assert self.lo is not None
        for name, o in other.series.items():
            s = self._series(name)
            s.counts += (
                o.counts if self.fixed else self._fold(o.counts, other.lo, other.width, self.lo, self.width)
            )
            s.n += o.n
            s.total += o.total
            s.lo, s.hi = min(s.lo, o.lo), max(s.hi, o.hi)
            s.nonfinite += o.nonfinite
            s.integral = s.integral and o.integral
        return self

    # --- reading ---
    def count(self, series: str | None = None) -> int:
        """Finite values counted, in one series or all of them."""
        return sum(s.n for k, s in self.series.items() if series is None or k == series)

    def mean(self, series: str) -> float | None:
        s = self.series.get(series)
        return s.total / s.n if s is not None and s.n else None

    def quantiles(self, series: str, qs: Sequence[float] = QUANTILES) -> dict[str, float | None]:
        """The centre of the bin holding the ceil(q * n)-th value, kept within the exact min and max."""
        s = self.series.get(series)
        if s is None or not s.n or self.lo is None:
            return {_qname(q): None for q in qs}
        cdf = np.cumsum(s.counts)
        out: dict[str, float | None] = {}
        for q in qs:
            i = min(int(np.searchsorted(cdf, max(1, math.ceil(q * s.n)), side="left")), self.bins - 1)
            # whole numbers on bins of width <= 1: the bin holds one, its low edge (exact)
            at = self.lo + (i if s.integral and self.width <= 1 else i + 0.5) * self.width
            out[_qname(q)] = min(max(at, s.lo), s.hi)
        return out

    def summary(self, series: str) -> dict[str, Any]:
        """Count, mean, min, max, non-finite count and quantiles of one series."""
        s = self.series.get(series)
        return {
            "count": s.n if s else 0,
            "mean": self.mean(series),
            "min": s.lo if s and s.n else None,
            "max": s.hi if s and s.n else None,
            "nonfinite": s.nonfinite if s else 0,
            "quantiles": self.quantiles(series),
        }

    # --- JSON ---
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the grid and, per series, its non-zero bins and exact moments."""
        series = {}
        for name, s in self.series.items():
            nz = np.flatnonzero(s.counts)
            series[name] = {
                "n": s.n,
                "sum": s.total,
                "min": s.lo if s.n else None,
                "max": s.hi if s.n else None,
                "nonfinite": s.nonfinite,
                "integral": s.integral,
                "bins": [int(i) for i in nz],
                "counts": [int(c) for c in s.counts[nz]],
            }
        return {"fixed": self.fixed, "lo": self.lo, "width": self.width, "bins": self.bins, "series": series}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Histogram:
        h = cls(bins=int(d["bins"]))
        h.fixed = bool(d["fixed"])
        h.lo = None if d["lo"] is None else float(d["lo"])
        h.width = float(d["width"])
        for name, sd in d["series"].items():
            s = h._series(name)
            s.counts[np.asarray(sd["bins"], dtype=np.int64)] = np.asarray(sd["counts"], dtype=np.int64)
            s.n, s.total, s.nonfinite = int(sd["n"]), float(sd["sum"]), int(sd["nonfinite"])
            s.lo = math.inf if sd["min"] is None else float(sd["min"])
            s.hi = -math.inf if sd["max"] is None else float(sd["max"])
            s.integral = bool(sd.get("integral", False))
        return h

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Histogram) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def combined(self, name: str = "all") -> Histogram:
        """Every series summed into one (a statistic's totals over kept and dropped)."""
        out = Histogram(bins=self.bins)
        out.fixed, out.lo, out.width = self.fixed, self.lo, self.width
        s = out._series(name)
        for o in self.series.values():
            s.counts += o.counts
            s.n, s.total, s.nonfinite = s.n + o.n, s.total + o.total, s.nonfinite + o.nonfinite
            s.lo, s.hi = min(s.lo, o.lo), max(s.hi, o.hi)
            s.integral = s.integral and o.integral
        return out

    def coarse(self, bars: int = PLOT_BARS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """At most `bars` bins over the occupied range (for a plot): edges and counts per series."""
        total = sum((s.counts for s in self.series.values()), np.zeros(self.bins, dtype=np.int64))
        nz = np.flatnonzero(total)
        if not len(nz) or self.lo is None:
            return np.zeros(0), {}
        first, last = int(nz[0]), int(nz[-1]) + 1
        step = max(1, -(-(last - first) // bars))
        if self.width < 1 and all(s.integral for s in self.series.values()):
            per_unit = round(1 / self.width)  # bars one whole number wide (or more), from one
            step = -(-step // per_unit) * per_unit
            first = max(0, first - round(self.lo / self.width + first) % per_unit)
        starts = np.arange(first, last, step)
        edges = self.lo + np.append(starts, min(starts[-1] + step, self.bins)) * self.width
        return edges, {
            k: np.add.reduceat(s.counts[first:last], starts - first) for k, s in self.series.items()
        }


def _doubled(width: float) -> float:
    if not math.isfinite(width * 2 * DEFAULT_BINS):
        raise ValueError("values too far apart to histogram (beyond float range)")
    return width * 2


def _qname(q: float) -> str:
    return f"q{round(q * 100):02d}"


# ----- the report -----------------------------------------------------------------------------
@dataclass
class ReportData:
    """What any command reports. `kept` None: the command selects nothing (score, recaption).

    Steps are dicts with at least op, saw, kept, dropped and seconds. `counts` are named tables of
    counts (pairs by status); `notes` one-line facts for the summary; `plot_paths` place a
    histogram's PNG elsewhere than plots/<name>.png (relative to the report); `failure_info` adds
    keys under `failures` (the number of shards); `cuts` draw a vertical line on a histogram (a
    threshold); `extra` adds command-specific keys to report.json; `tables`, `figures` and
    `galleries` (thumbnails) are rendered in report.md and report.html after the counts.
    """

    title: str
    command: str
    inputs: Any = None
    recipe: str | None = None
    rows: int = 0
    kept: int | None = None
    steps: list[dict[str, Any]] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)
    histograms: dict[str, Histogram] = field(default_factory=dict)
    failed_shards: dict[str, str] = field(default_factory=dict)
    failed_pairs: int = 0
    failure_info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    plot_paths: dict[str, str] = field(default_factory=dict)
    cuts: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # Tables beyond the fixed ones: title -> (column names, rows of cell texts).
    tables: dict[str, tuple[list[str], list[list[str]]]] = field(default_factory=dict)
    # Plots made by the command itself: (caption, PNG path relative to the report).
    figures: list[tuple[str, str]] = field(default_factory=list)
    # Thumbnail galleries: title -> [(image path relative to the report, caption)].
    galleries: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    # What a row is, in the report's words: "pairs" (image-caption pairs), "images" (a built dataset).
    unit: str = "pairs"

    @property
    def dropped(self) -> int | None:
        return None if self.kept is None else self.rows - self.kept

    def plot_path(self, name: str) -> str:
        return self.plot_paths.get(name) or f"plots/{re.sub(r'[^A-Za-z0-9_.-]', '_', name)}.png"

    def to_json(self) -> dict[str, Any]:
        """report.json: the keys `vlcurate run` always wrote, plus title, command and the rest."""
        stats: dict[str, Any] = {}
        for name, h in self.histograms.items():
            whole = h.combined().summary("all")
            stats[name] = {
                "plot": self.plot_path(name),
                "count": whole["count"],
                "mean": whole["mean"],
                "quantiles": whole["quantiles"],
                "series": {n: h.summary(n) for n in h.series},
                "histogram": h.to_dict(),
            }
        report: dict[str, Any] = {
            "title": self.title,
            "command": self.command,
            "inputs": self.inputs,
            "recipe": self.recipe,
            "rows": self.rows,
            "kept": self.kept,
            "dropped": self.dropped,
            "steps": self.steps,
            "drop_reasons": dict(self.reasons.most_common(50)),
            "statistics": stats,
            "failures": {"failed_shards": self.failed_shards, "failed_pairs": self.failed_pairs}
            | self.failure_info,
            "warnings": self.warnings,
            "counts": self.counts,
            "notes": self.notes,
        }
        clash = set(report) & set(self.extra)
        if clash:
            raise ValueError(f"extra keys clash with the report's own: {sorted(clash)}")
        return report | self.extra


def write_report(out: str | Path, report: ReportData, *, formats: Sequence[str] = FORMATS) -> dict[str, Any]:
    """Write `report` under `out` as report.json / report.md / report.html (those in `formats`)
    and one PNG per histogram; returns the JSON."""
    unknown = set(formats) - set(FORMATS)
    if unknown:
        raise ValueError(f"unknown report formats {sorted(unknown)}; known: {FORMATS}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    for name, h in report.histograms.items():
        png = root / report.plot_path(name)
        png.parent.mkdir(parents=True, exist_ok=True)
        plot_histogram(png, h, name, cut=report.cuts.get(name), unit=report.unit)
    data = report.to_json()
    if "json" in formats:
        write_json_atomic(root / "report.json", data)
    if "md" in formats:
        write_text_atomic(root / "report.md", render_markdown(report, data))
    if "html" in formats:
        write_text_atomic(root / "report.html", render_html(report, data))
    return data


# ----- rendering ------------------------------------------------------------------------------
def plot_histogram(
    path: Path, h: Histogram, title: str, cut: float | None = None, unit: str = "pairs"
) -> None:
    """One PNG of every series of `h` overlaid (at most PLOT_BARS bars), written to a temporary
    name then renamed. Uses matplotlib's Agg canvas directly: no display, no pyplot state."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.6), dpi=100)
    ax = fig.add_subplot()
    edges, counts = h.coarse()
    if len(edges):
        for i, (name, c) in enumerate(counts.items()):
            ax.stairs(
                c,
                edges,
                fill=True,
                alpha=0.75 if i == 0 else 0.55,
                color=COLOURS.get(name),
                label=f"{name} ({h.count(name):,})",
            )
    else:
        ax.text(0.5, 0.5, "no values", ha="center", va="center", transform=ax.transAxes)
    if cut is not None:
        ax.axvline(cut, color="#333", linewidth=1.2, linestyle="--", label=f"cut {cut:.4g}")
    if len(edges) or cut is not None:
        ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.set_ylabel(unit)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


def _num(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _md(text: Any) -> str:
    """Text for report.md: `<` and `&` escaped (Markdown renderers pass raw HTML through, so a
    hostile caption or reason could open a tag), pipes, backticks and newlines neutralised."""
    t = str(text).replace("&", "&amp;").replace("<", "&lt;")
    return t.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _headline(r: ReportData) -> str:
    if r.kept is None:
        return f"{r.rows:,} {r.unit}"
    return f"{r.kept:,} of {r.rows:,} {r.unit} kept ({r.rows - r.kept:,} dropped)"


def _inputs_text(inputs: Any) -> str:
    if isinstance(inputs, Mapping) and "files" in inputs:  # the filter's inputs: files and their form
        inputs = inputs["files"]
    if isinstance(inputs, list | tuple):
        return ", ".join(str(i) for i in inputs[:5]) + (
            f" and {len(inputs) - 5} more" if len(inputs) > 5 else ""
        )
    return "" if inputs is None else str(inputs)


def _stat_line(name: str, st: dict[str, Any]) -> str:
    parts = []
    for series, s in st["series"].items():
        q = s["quantiles"]
        parts.append(
            f"{series} {s['count']:,} (mean {_num(s['mean'])}, q05/q50/q95 "
            f"{_num(q.get('q05'))} / {_num(q.get('q50'))} / {_num(q.get('q95'))})"
        )
    return f"{name}: " + "; ".join(parts)


def render_markdown(r: ReportData, data: Mapping[str, Any]) -> str:
    """report.md: summary, steps, counts, reasons, failures, warnings and the plots."""
    lines = [f"# {_md(r.title)}", "", f"- {_headline(r)}"]
    if r.inputs is not None:
        lines.append(f"- input: {_md(_inputs_text(r.inputs))}")
    if r.recipe:
        lines.append(f"- recipe: {_md(r.recipe)}")
    lines += [f"- {_md(n)}" for n in r.notes]
    if r.steps:
        lines += [
            "",
            "## Steps",
            "",
            "| step | saw | kept | dropped | seconds |",
            "|---|---:|---:|---:|---:|",
        ]
        lines += [
            f"| {_md(s['op'])} | {s['saw']:,} | {s['kept']:,} | {s['dropped']:,} "
            f"| {float(s['seconds']):.2f} |"
            for s in r.steps
        ]
    for title, counts in r.counts.items():
        lines += ["", f"## {_md(title)}", "", f"| | {r.unit} |", "|---|---:|"]
        lines += [f"| {_md(k)} | {int(v):,} |" for k, v in counts.items()]
    for title, (head, rows) in r.tables.items():
        lines += ["", f"## {_md(title)}", "", "| " + " | ".join(_md(h) for h in head) + " |"]
        lines += ["|" + "---|" * len(head)] + ["| " + " | ".join(_md(c) for c in row) + " |" for row in rows]
    for caption, path in r.figures:
        lines += ["", f"![{_md(caption)}]({path})"]
    for title, thumbs in r.galleries.items():
        lines += ["", f"## {_md(title)}", ""]
        lines += [f"![{_md(caption)}]({path}) {_md(caption)}  " for path, caption in thumbs] or ["none"]
    if data["drop_reasons"]:
        lines += ["", f"## Why {r.unit} were dropped", "", f"| reason | {r.unit} |", "|---|---:|"]
        lines += [f"| {_md(k)} | {v:,} |" for k, v in data["drop_reasons"].items()]
    if r.failed_shards or r.failed_pairs:
        lines += [
            "",
            "## Failures",
            "",
            f"{r.failed_pairs:,} {r.unit} failed; {len(r.failed_shards):,} shards failed or were cut short",
        ]
        if r.failed_shards:
            lines += ["", "| shard | error |", "|---|---|"]
            lines += [f"| {_md(k)} | {_md(v)} |" for k, v in r.failed_shards.items()]
    if r.warnings:
        lines += ["", "## Warnings", ""] + [f"- {_md(w)}" for w in r.warnings]
    if data["statistics"]:
        lines += ["", "## Statistics", ""]
        for name, st in data["statistics"].items():
            lines += [f"- {_md(_stat_line(name, st))}", "", f"![{_md(name)}]({st['plot']})", ""]
    return "\n".join(lines).rstrip() + "\n"


_REPORT_CSS = (
    "td,th{border:none;border-bottom:1px solid #ddd;padding:4px 10px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}th{background:none}"
    "figure{display:inline-block;margin:8px}figure img{max-width:520px}"
    "figure.thumb{width:140px;vertical-align:top;font-size:11px}"
    "figure.thumb img{width:96px;image-rendering:pixelated}"
)


def render_html(r: ReportData, data: Mapping[str, Any]) -> str:
    """report.html: the same as report.md, every piece of text through base.html.esc."""
    e = esc

    parts = [f"<h1>{e(r.title)}</h1>", f"<p>{e(_headline(r))}</p><ul>"]
    if r.inputs is not None:
        parts.append(f"<li>input: {e(_inputs_text(r.inputs))}</li>")
    if r.recipe:
        parts.append(f"<li>recipe: {e(r.recipe)}</li>")
    parts += [f"<li>{e(n)}</li>" for n in r.notes]
    parts.append("</ul>")
    if r.steps:
        parts.append("<h2>Steps</h2>")
        parts.append(
            table(
                ["step", "saw", "kept", "dropped", "seconds"],
                (
                    [
                        e(str(s["op"])),
                        f"{s['saw']:,}",
                        f"{s['kept']:,}",
                        f"{s['dropped']:,}",
                        f"{float(s['seconds']):.2f}",
                    ]
                    for s in r.steps
                ),
            )
        )
    for title, counts in r.counts.items():
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(table(["", r.unit], ([e(str(k)), f"{int(v):,}"] for k, v in counts.items())))
    for title, (head, rows) in r.tables.items():
        parts.append(f"<h2>{e(title)}</h2>")
        parts.append(table(head, ([e(c) for c in row] for row in rows)))
    parts += [
        f"<figure><img src='{e(path)}' alt='{e(caption)}'><figcaption>{e(caption)}</figcaption></figure>"
        for caption, path in r.figures
    ]
    for title, thumbs in r.galleries.items():
        parts.append(f"<h2>{e(title)}</h2><div class='gallery'>")
        parts += [
            f"<figure class='thumb'><img src='{e(path)}' alt='{e(caption)}'>"
            f"<figcaption>{e(caption)}</figcaption></figure>"
            for path, caption in thumbs
        ] or ["<p>none</p>"]
        parts.append("</div>")
    if r.failed_shards or r.failed_pairs:
        parts.append(
            f"<h2>Failures</h2><p>{r.failed_pairs:,} {e(r.unit)} failed; "
            f"{len(r.failed_shards):,} shards failed or were cut short</p>"
        )
        if r.failed_shards:
            parts.append(
                table(["shard", "error"], ([e(str(k)), e(str(v))] for k, v in r.failed_shards.items()))
            )
    if data["drop_reasons"]:
        parts.append(f"<h2>Why {e(r.unit)} were dropped</h2>")
        parts.append(
            table(["reason", r.unit], ([e(str(k)), f"{v:,}"] for k, v in data["drop_reasons"].items()))
        )
    if r.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{e(w)}</li>" for w in r.warnings) + "</ul>")
    if data["statistics"]:
        parts.append("<h2>Statistics</h2>")
        parts += [
            f"<figure><img src='{e(st['plot'])}' alt='{e(name)}'>"
            f"<figcaption>{e(_stat_line(name, st))}</figcaption></figure>"
            for name, st in data["statistics"].items()
        ]
    return page(r.title, parts, css=_REPORT_CSS)
