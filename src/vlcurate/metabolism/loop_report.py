"""HTML for `vlcurate loop`: one page per round (OUT/round-N/report.html) and the summary
(OUT/summary.html) with accuracy per category before and after every round, with 95% intervals."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from vlcurate.base.atomic import write_with
from vlcurate.base.html import esc as _e
from vlcurate.base.html import page, table

if TYPE_CHECKING:
    from vlcurate.metabolism.loop import LoopSummary, RoundRecord


def _pct(a: dict[str, Any] | None) -> str:
    if not a or a.get("accuracy") is None:
        return "-"
    lo, hi = a["ci95"]
    return f"{a['accuracy']:.1%} ({lo:.0%}-{hi:.0%})"


def plot_round(rec: RoundRecord, path: Path) -> bool:
    cats = [c for c in rec.accuracy_before if c in rec.accuracy_after]
    if not cats:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.2), dpi=100)
    ax = fig.add_subplot()
    x = list(range(len(cats)))
    for off, key, colour, label in (
        (-0.2, "accuracy_before", "#888", "before"),
        (0.2, "accuracy_after", "#1f77b4", "after"),
    ):
        data = getattr(rec, key)
        acc = [data[c]["accuracy"] or 0.0 for c in cats]
        err = [
            [a - data[c]["ci95"][0] for a, c in zip(acc, cats, strict=True)],
            [data[c]["ci95"][1] - a for a, c in zip(acc, cats, strict=True)],
        ]
        ax.bar([i + off for i in x], acc, width=0.4, color=colour, yerr=err, capsize=3, label=label)
    ax.set_xticks(x, cats, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title(f"round {rec.round}: {rec.status}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return True


def _table(rec: RoundRecord) -> str:
    rows = []
    comp = (rec.decision or {}).get("categories", {})
    for c in sorted(set(rec.accuracy_before) | set(rec.accuracy_after)):
        d = comp.get(c, {})
        flag = (
            "<span class=bad>regressed</span>"
            if d.get("regressed")
            else ("<span class=ok>improved</span>" if d.get("improved") else "")
        )
        p = d.get("p_value")
        before, after = _pct(rec.accuracy_before.get(c)), _pct(rec.accuracy_after.get(c))
        rows.append([_e(c), before, after, "-" if p is None else f"{p:.3g}", flag])
    return table(["category", "before", "after", "p", ""], rows)


def round_html(rec: RoundRecord, folder: Path) -> str:
    fig = plot_round(rec, folder / "accuracy.png")
    reasons = (rec.decision or {}).get("reasons", [])
    parts = [
        f"<h1>Round {rec.round}: {_e(rec.status)}</h1>",
        f"<p>base version {_e((rec.base_version or '')[:12])} -> "
        f"new version {_e((rec.new_version or '')[:12])}; "
        f"top weakness: <b>{_e(rec.top_weakness)}</b>; plan {_e(rec.plan_id)}: {rec.added} samples added, "
        f"{rec.removed} removed.</p>",
        '<p><a href="diag/report.html">diagnosis</a> · <a href="plan/plan.json">plan</a></p>',
    ]
    if rec.error:
        parts.append(f"<p class=bad>{_e(rec.error)}</p>")
    if fig:
        parts.append('<img src="accuracy.png" alt="accuracy before and after">')
    parts.append(_table(rec))
    if rec.targets:
        rows = [
            [
                f"{_e(t['weakness'])} {_e(t['label'])}",
                f"{_pct(t['before'])} of {t['before']['n']}",
                _pct(t["after"]),
                "closed" if t["closed"] else "",
            ]
            for t in rec.targets
        ]
        parts += ["<h3>The weaknesses it was for</h3>", table(["weakness", "before", "after", ""], rows)]
    parts += [f"<p>{_e(r)}</p>" for r in reasons]
    return page(f"round {rec.round}", parts)


def summary_html(summary: LoopSummary, out: Path) -> str:
    parts = [
        f"<h1>Data metabolism loop</h1><p>{_e(summary.stopped)}; "
        f"final version {_e((summary.final_version or '')[:12])}</p>",
        table(
            ["round", "status", "top weakness", "added", "removed", "overall before", "overall after"],
            (
                [
                    f"<a href='round-{r.round}/report.html'>{r.round}</a>",
                    _e(r.status),
                    _e(r.top_weakness),
                    str(r.added),
                    str(r.removed),
                    _pct(r.accuracy_before.get("overall")),
                    _pct(r.accuracy_after.get("overall")),
                ]
                for r in summary.rounds
            ),
        ),
    ]
    for r in summary.rounds:
        if (out / f"round-{r.round}" / "accuracy.png").is_file():
            parts.append(f'<h3>round {r.round}</h3><img src="round-{r.round}/accuracy.png">')
    return page("loop", parts)
