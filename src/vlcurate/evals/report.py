"""The evaluation report: report.json, report.md, report.html and accuracy.png in the run folder.

Per category: scored answers, accuracy and its 95% Wilson interval (a bar chart with the intervals
as error bars); the count of every status; and the weakest attribute slices (items whose `meta`
names e.g. colour=red), which is where a planted or real weakness shows first.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from vlcurate.base.atomic import write_json_atomic, write_text_atomic, write_with
from vlcurate.base.html import esc, page
from vlcurate.base.html import table as html_table
from vlcurate.evals.results import CategoryStats, EvalSummary, SampleResult, category_stats

PLOT_FILE = "accuracy.png"
MIN_SLICE = 3  # attribute slices with fewer scored answers are left out
MAX_SLICES = 15
MAX_FAILURES = 20  # failed answers listed in the report (all of them are in samples.jsonl)


def failures(rows: list[SampleResult]) -> list[list[str]]:
    """The first failed answers as table rows: id, category, status, question, reference, reply."""
    out = []
    for r in sorted(rows, key=lambda r: r.key):
        if r.correct is False or r.status == "error":
            reply = (r.response or r.error or "")[:80]
            out.append([r.id, r.category, r.status, r.question[:80], str(r.answer or ""), reply])
        if len(out) >= MAX_FAILURES:
            break
    return out


def attribute_slices(rows: list[SampleResult], min_n: int = MIN_SLICE) -> dict[str, CategoryStats]:
    """Accuracy per `key=value` of the items' meta (string and bool values), weakest first."""
    groups: dict[str, list[SampleResult]] = defaultdict(list)
    for r in rows:
        for k, v in r.meta.items():
            if isinstance(v, str | bool) and k not in ("scene",):
                groups[f"{k}={str(v).lower() if isinstance(v, bool) else v}"].append(r)
    stats = {k: category_stats(v) for k, v in groups.items()}
    kept = {k: s for k, s in stats.items() if s.n >= min_n and s.accuracy is not None}
    return dict(sorted(kept.items(), key=lambda kv: (kv[1].accuracy or 0.0, -kv[1].n)))


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _ci(s: CategoryStats) -> str:
    return f"{100 * s.ci95[0]:.1f}-{100 * s.ci95[1]:.1f}%"


def plot_categories(path: Path, summary: EvalSummary) -> None:
    """Accuracy per category with 95% Wilson intervals (PNG, matplotlib Agg, written atomically)."""
    from matplotlib.figure import Figure

    cats = [c for c, s in summary.per_category.items() if s.accuracy is not None]
    fig = Figure(figsize=(max(4.0, 0.9 * len(cats) + 2), 3.4), dpi=100)
    ax = fig.add_subplot()
    accs = [summary.per_category[c].accuracy or 0.0 for c in cats]
    lo = [a - summary.per_category[c].ci95[0] for a, c in zip(accs, cats, strict=True)]
    hi = [summary.per_category[c].ci95[1] - a for a, c in zip(accs, cats, strict=True)]
    ax.bar(cats, accs, color="#4c72b0", yerr=[lo, hi], capsize=4, ecolor="#333")
    for i, c in enumerate(cats):
        ax.text(i, 0.02, f"n={summary.per_category[c].n}", ha="center", fontsize=7, color="white")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    ax.set_title(f"{summary.model} on {Path(summary.bench).name}", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _markdown(
    summary: EvalSummary, slices: dict[str, CategoryStats], run: dict[str, Any], failed: list[list[str]]
) -> str:
    o = summary.overall
    lines = [
        f"# Evaluation: {summary.model} on {summary.bench}",
        "",
        f"- answered {summary.answered} of {summary.expected} (item, repeat) pairs"
        + ("" if summary.complete else " — **incomplete**: re-run the same command to finish"),
        f"- overall accuracy {_pct(o.accuracy)} ({o.correct}/{o.n}, 95% CI {_ci(o)}), "
        f"{o.unscored} not scored",
        f"- cache hits {summary.cache_hits}; asked this time {run.get('asked', 0)} "
        f"in {run.get('elapsed_s', 0)} s",
        "",
        "| category | n | correct | accuracy | 95% CI | not scored |",
        "|---|---:|---:|---:|---|---:|",
    ]
    for c, s in summary.per_category.items():
        lines.append(f"| {c} | {s.n} | {s.correct} | {_pct(s.accuracy)} | {_ci(s)} | {s.unscored} |")
    lines += ["", "| status | count |", "|---|---:|"]
    lines += [f"| {k} | {v} |" for k, v in summary.status_counts.items()]
    if slices:
        lines += [
            "",
            "Weakest attribute slices:",
            "",
            "| slice | n | accuracy | 95% CI |",
            "|---|---:|---:|---|",
        ]
        lines += [
            f"| {k} | {s.n} | {_pct(s.accuracy)} | {_ci(s)} |" for k, s in list(slices.items())[:MAX_SLICES]
        ]
    if failed:
        lines += ["", "First failures:", "", "| id | category | status | question | reference | reply |"]
        lines += ["|---|---|---|---|---|---|"] + [
            "| " + " | ".join(_cell(c) for c in f) + " |" for f in failed
        ]
    lines += ["", f"![accuracy per category]({PLOT_FILE})", ""]
    return "\n".join(lines)


def _html(
    summary: EvalSummary, slices: dict[str, CategoryStats], run: dict[str, Any], failed: list[list[str]]
) -> str:
    def table(head: list[str], rows: list[list[str]]) -> str:
        return html_table(head, rows, escape_cells=True)

    o = summary.overall
    cats = [
        [c, str(s.n), str(s.correct), _pct(s.accuracy), _ci(s), str(s.unscored)]
        for c, s in summary.per_category.items()
    ]
    parts = [
        f"<h1>{esc(summary.model)} on {esc(summary.bench)}</h1>",
        f"<p>Overall accuracy <b>{_pct(o.accuracy)}</b> ({o.correct}/{o.n}, 95% CI {_ci(o)}); "
        f"{summary.answered} of {summary.expected} answered{'' if summary.complete else ' (incomplete)'}; "
        f"{summary.cache_hits} from the cache; {run.get('asked', 0)} asked "
        f"in {run.get('elapsed_s', 0)} s.</p>",
        f"<img src='{PLOT_FILE}' alt='accuracy per category'>",
        table(["category", "n", "correct", "accuracy", "95% CI", "not scored"], cats),
        table(["status", "count"], [[k, str(v)] for k, v in summary.status_counts.items()]),
    ]
    if slices:
        rows = [[k, str(s.n), _pct(s.accuracy), _ci(s)] for k, s in list(slices.items())[:MAX_SLICES]]
        parts += ["<h2>Weakest attribute slices</h2>", table(["slice", "n", "accuracy", "95% CI"], rows)]
    if failed:
        head = ["id", "category", "status", "question", "reference", "reply"]
        parts += ["<h2>First failures</h2>", table(head, failed)]
    return page("vlcurate eval", parts, css="td{text-align:right}td:first-child{text-align:left}")


def write_eval_report(
    out: Path, summary: EvalSummary, rows: list[SampleResult], *, run: dict[str, Any]
) -> None:
    """report.json (summary, this invocation's timing and usage, attribute slices), report.md,
    report.html and accuracy.png."""
    slices = attribute_slices(rows)
    write_json_atomic(
        out / "report.json",
        {
            "summary": summary.model_dump(mode="json"),
            "run": run,
            "slices": {k: s.model_dump(mode="json") for k, s in slices.items()},
        },
    )
    failed = failures(rows)
    write_text_atomic(out / "report.md", _markdown(summary, slices, run, failed))
    write_text_atomic(out / "report.html", _html(summary, slices, run, failed))
    if summary.per_category:
        plot_categories(out / PLOT_FILE, summary)
