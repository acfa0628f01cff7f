"""The build's report: cost and quality side by side (`OUT/report/`).

Per stage: model calls, wall time, images in and out and what was removed (from the `StageLog`);
thumbnails of removed and doubtful images (small PNG files beside the report, at most `PER_REASON`
per reason); per-class plots of counts against the target and of reliability with its interval.
Written through the shared `base.report` writer as report.json, report.md and report.html.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.base.atomic import write_parquet_atomic, write_with
from vlcurate.base.images import thumbnail_png
from vlcurate.base.report import ReportData, write_report
from vlcurate.builder.costs import StageLog, _reason_kind

PER_REASON = 12  # thumbnails kept per stage and reason
THUMB = 64  # pixels, longer side


def save_thumbs(folder: Path, picks: Sequence[tuple[str, bytes]]) -> dict[str, str]:
    """Write thumbnails named by uid hash under `folder`; returns uid -> file name (decodable ones)."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    for uid, data in picks:
        png = thumbnail_png(data, THUMB)
        if png is None:
            continue
        name = hashlib.sha1(uid.encode()).hexdigest()[:16] + ".png"
        (folder / name).write_bytes(png)
        out[uid] = name
    return out


def sample_by_reason(items: Sequence[tuple[str, str]], per_reason: int = PER_REASON) -> list[tuple[str, str]]:
    """(uid, reason) pairs, at most `per_reason` of each kind of reason, in the order given."""
    seen: Counter[str] = Counter()
    out = []
    for uid, reason in items:
        kind = _reason_kind(reason)
        if seen[kind] < per_reason:
            seen[kind] += 1
            out.append((uid, reason))
    return out


def _bar_plot(path: Path, title: str, names: list[str], values: list[float], **kw: Any) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.4), dpi=100)
    ax = fig.add_subplot()
    lo, hi = kw.get("lo"), kw.get("hi")
    err = None
    if lo is not None and hi is not None:
        below = [max(0.0, v - a) for v, a in zip(values, lo, strict=True)]
        err = [below, [max(0.0, b - v) for v, b in zip(values, hi, strict=True)]]
    ax.bar(names, values, color=kw.get("color", "#4c72b0"), yerr=err, capsize=4)
    if kw.get("target") is not None:
        ax.axhline(kw["target"], color="#333", linestyle="--", linewidth=1.2, label=kw.get("target_label"))
        ax.legend(loc="lower right", fontsize=8)
    if kw.get("ylim"):
        ax.set_ylim(*kw["ylim"])
    ax.set_ylabel(kw.get("ylabel", ""))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")


def class_plots(
    root: Path,
    classes: list[str],
    per_class: dict[str, int],
    target: int,
    alr_per_class: dict[str, Any],
    bar: float,
) -> list[tuple[str, str]]:
    """Two PNGs under root/plots: exported images per class against the target, and ALR per class."""
    (root / "plots").mkdir(parents=True, exist_ok=True)
    _bar_plot(
        root / "plots" / "per_class_counts.png",
        "exported images per class",
        classes,
        [float(per_class.get(c, 0)) for c in classes],
        target=target,
        target_label=f"target {target}",
        ylabel="images",
    )
    vals, lo, hi = [], [], []
    for c in classes:
        m = alr_per_class.get(c) or {}
        a = m.get("alr")
        vals.append(0.0 if a is None else float(a))
        ci = m.get("ci95") or [vals[-1], vals[-1]]
        lo.append(float(ci[0]))
        hi.append(float(ci[1]))
    _bar_plot(
        root / "plots" / "per_class_reliability.png",
        "label reliability per class (95% interval)",
        classes,
        vals,
        lo=lo,
        hi=hi,
        target=bar,
        target_label=f"reliability bar {bar:g}",
        ylim=(0, 1.02),
        color="#2a7",
        ylabel="ALR",
    )
    return [
        ("exported images per class against the target", "plots/per_class_counts.png"),
        ("label reliability per class with its 95% interval", "plots/per_class_reliability.png"),
    ]


def _calls_text(calls: dict[str, int]) -> str:
    return ", ".join(f"{k} {v:,}" for k, v in sorted(calls.items())) or "-"


def write_build_report(
    root: Path,
    *,
    title: str,
    inputs: list[str],
    log: StageLog,
    rows: int,
    kept: int,
    counts: dict[str, dict[str, int]],
    notes: list[str],
    tool_steps: list[dict[str, Any]],
    images: dict[str, bytes],
    doubtful: Sequence[tuple[str, str]],
    classes: list[str],
    target: int,
    alr_per_class: dict[str, Any],
    reliability_bar: float,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """report.json / .md / .html with per-stage costs, thumbnails and per-class plots under `root`."""
    root.mkdir(parents=True, exist_ok=True)
    stage_rows = log.summary()
    table = [
        [
            s["stage"] + (" (resumed)" if s["resumed"] else ""),
            _calls_text(s["calls"]),
            f"{s['seconds']:.2f}",
            f"{s['saw']:,}",
            f"{s['kept']:,}",
            f"{s['removed']:,}",
            ", ".join(f"{k} {v}" for k, v in s["removed_by_reason"].items()) or "-",
        ]
        for s in stage_rows
    ]
    galleries: dict[str, list[tuple[str, str]]] = {}
    for st in log.stages.values():
        picks = sample_by_reason([(r.uid, r.reason) for r in st.removed])
        names = save_thumbs(root / "thumbs", [(u, images[u]) for u, _ in picks if u in images])
        if st.removed:
            galleries[f"Removed by {st.name} ({len(st.removed):,}; up to {PER_REASON} per reason)"] = [
                (f"thumbs/{names[u]}", why) for u, why in picks if u in names
            ]
    picks = sample_by_reason(doubtful, per_reason=3 * PER_REASON)
    names = save_thumbs(root / "thumbs", [(u, images[u]) for u, _ in picks if u in images])
    galleries[f"Doubtful labels held back for review ({len(doubtful):,})"] = [
        (f"thumbs/{names[u]}", why) for u, why in picks if u in names
    ]
    figures = class_plots(root, classes, counts.get("per_class", {}), target, alr_per_class, reliability_bar)
    report = ReportData(
        title=title,
        command="build",
        unit="images",
        inputs=inputs,
        rows=rows,
        kept=kept,
        steps=tool_steps,
        reasons=Counter({k: v for s in stage_rows for k, v in s["removed_by_reason"].items()}),
        counts=counts,
        notes=notes,
        tables={
            "Cost and effect per stage": (
                ["stage", "model calls", "seconds", "saw", "kept", "removed", "why"],
                table,
            ),
            "Model calls in all": (
                ["kind", "calls"],
                [[k, f"{v:,}"] for k, v in sorted(log.totals().items())],
            ),
        },
        figures=figures,
        galleries=galleries,
        extra={"stages": stage_rows, "model_calls": log.totals(), **extra},
    )
    return write_report(root, report)


def alr_note(alr: dict[str, Any]) -> str:
    """One line: the ALR, its interval, and how it was estimated."""
    how = (
        "from the crowd's verified agreement"
        if alr.get("source") == "platform"
        else "corrected for the verifier's measured error"
        if alr.get("calibrated")
        else "share the second check confirmed, uncalibrated"
    )
    value = "-" if alr.get("alr") is None else f"{alr['alr']:.4f}"
    return f"ALR {value} (95% CI {alr['ci95']}; {how}; {alr.get('checked')} labels)"


def save_removed_thumbs(path: Path, images: Sequence[Any]) -> None:
    """Small PNGs of the removed images (the report shows them; the pool keeps only what passed)."""
    thumbs = [(im.uid, thumbnail_png(im.data, THUMB)) for im in images[: 40 * PER_REASON]]
    table = pa.table(
        {
            "uid": [u for u, t in thumbs if t is not None],
            "thumb": pa.array([t for _, t in thumbs if t is not None], pa.binary()),
        }
    )
    write_parquet_atomic(path, table)


def load_removed_thumbs(path: Path) -> dict[str, bytes]:
    """What `save_removed_thumbs` wrote (nothing when the file is missing)."""
    if not path.is_file():
        return {}
    t = pq.read_table(path).to_pydict()
    return dict(zip(t["uid"], t["thumb"], strict=True))
