"""DIAG/report.html: what a person looks at after `vlcurate diagnose`.

Two plots (accuracy per category with 95% intervals; weakness scores), the weakness table, a
gallery of failed items per top weakness (thumbnail, question, reference, answer, what the model
said when re-asked), the failure clusters and the implicated training samples. Thumbnails are small
PNG copies under DIAG/images so the folder is self-contained.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from vlcurate.base.atomic import write_bytes_atomic, write_text_atomic, write_with
from vlcurate.base.html import esc as _e
from vlcurate.base.html import page
from vlcurate.base.html import table as _table
from vlcurate.base.images import thumbnail_png
from vlcurate.metabolism.diagnosis import Diagnosis, Failure

THUMB = 96
GALLERY_WEAKNESSES = 5
GALLERY_ITEMS = 8
CSS = (
    ".fig{max-width:100%}.card{display:inline-block;width:220px;margin:6px;vertical-align:top;"
    "font-size:12px;border:1px solid #ddd;padding:6px}"
)


def plot_categories(diag: Diagnosis, path: Path) -> bool:
    """Accuracy per category with its Wilson interval, from the run's summary."""
    cats = [(c, s) for c, s in diag.per_category.items() if s.get("accuracy") is not None]
    if not cats:
        return False
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 3.2), dpi=100)
    ax = fig.add_subplot()
    names = [c for c, _ in cats]
    acc = [float(s["accuracy"]) for _, s in cats]
    lo = [a - float(s["ci95"][0]) for a, (_, s) in zip(acc, cats, strict=True)]
    hi = [float(s["ci95"][1]) - a for a, (_, s) in zip(acc, cats, strict=True)]
    ax.bar(names, acc, color="#4c72b0", yerr=[lo, hi], capsize=4)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy (95% CI)")
    ax.set_title("accuracy per category", fontsize=10)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return True


def plot_weaknesses(diag: Diagnosis, path: Path) -> bool:
    ws = diag.weaknesses[:12]
    if not ws:
        return False
    from matplotlib.figure import Figure

    colours = {
        "perception": "#c44",
        "reasoning": "#d90",
        "format": "#888",
        "refusal": "#7a3",
        "coverage": "#39c",
        "label_noise": "#a5c",
    }
    fig = Figure(figsize=(6.5, 0.45 * len(ws) + 1.2), dpi=100)
    ax = fig.add_subplot()
    labels = [f"{w.id} {w.label}"[:60] for w in ws][::-1]
    ax.barh(labels, [w.score for w in ws][::-1], color=[colours.get(w.kind, "#555") for w in ws][::-1])
    ax.set_xlabel("score (excess failures at the lower 95% bound)")
    ax.set_title("weaknesses, ranked", fontsize=10)
    ax.tick_params(axis="y", labelsize=8)
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
    return True


def thumbnail(image: str | None, out: Path) -> str | None:
    """A small PNG copy of a failure's image under out/images; its path relative to out."""
    if not image or not Path(image).is_file():
        return None
    name = hashlib.sha1(image.encode()).hexdigest()[:16] + ".png"
    dest = out / "images" / name
    if not dest.exists():
        try:
            png = thumbnail_png(Path(image).read_bytes(), THUMB)
        except OSError:
            return None
        if png is None:
            return None
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(dest, png)
    return f"images/{name}"


def _card(f: Failure, out: Path) -> str:
    thumb = thumbnail(f.image, out)
    img = f'<img src="{thumb}" width="{THUMB}"><br>' if thumb else "<i>no image</i><br>"
    probe = ""
    if f.probe is not None:
        ok = f.probe.from_description_correct
        probe = (
            f"<br>described: {_e((f.probe.description or '')[:140])}"
            f"<br>from the description: <span class={'good' if ok else 'bad'}>"
            f"{_e(f.probe.from_description)}</span>"
            f"<br>without the image: {_e(f.probe.blind)}"
        )
    return (
        f'<div class="card">{img}<b>{_e(f.id)}</b> [{_e(f.kind)}]<br>{_e(f.question)}<br>'
        f"reference: <b>{_e(f.answer)}</b><br>answered: "
        f"<span class=bad>{_e(f.extracted or f.response)}</span> ({_e(f.status)}){probe}</div>"
    )


def render(diag: Diagnosis, out: Path) -> str:
    parts: list[str] = []
    acc = f"{diag.accuracy:.1%}" if diag.accuracy is not None else "-"
    parts.append(
        f"<h1>Diagnosis of {_e(diag.run)}</h1><p>model <b>{_e(diag.model)}</b> on {_e(diag.bench)}: "
        f"{diag.answers} answers, {diag.failures} failures, accuracy {acc}. Attribution: "
        + ", ".join(f"{_e(k)} {v}" for k, v in diag.attribution.items())
        + (
            f". Training pool: {diag.train.samples} samples ({diag.train.wrong_labels} with wrong labels)."
            if diag.train
            else "."
        )
        + "</p>"
    )
    parts += [f"<p class=warn>warning: {_e(w)}</p>" for w in diag.warnings]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    if plot_categories(diag, out / "figures" / "categories.png"):
        parts.append('<img class=fig src="figures/categories.png" alt="accuracy per category">')
    if plot_weaknesses(diag, out / "figures" / "weaknesses.png"):
        parts.append('<img class=fig src="figures/weaknesses.png" alt="weakness scores">')
    parts.append("<h2>Weaknesses</h2>")
    if not diag.weaknesses:
        parts.append("<p>No weakness: no slice fails more than the rest of the run.</p>")
    rows = [
        [
            _e(w.id),
            _e(w.kind),
            _e(w.label),
            f"{w.score:.2f}",
            f"{w.failures}/{w.n} ({w.failure_rate:.0%}, CI {w.ci95[0]:.0%}-{w.ci95[1]:.0%})",
            "thin" if w.coverage and w.coverage.thin else ("ok" if w.coverage else "-"),
            "<br>".join(_e(x) for x in w.evidence),
        ]
        for w in diag.weaknesses
    ]
    parts.append(_table(["id", "kind", "slice", "score", "failures", "training", "evidence"], rows))
    by_id: dict[str, Failure] = {}
    for f in diag.failed:
        by_id.setdefault(f.id, f)
    for w in diag.weaknesses[:GALLERY_WEAKNESSES]:
        cards = [_card(by_id[i], out) for i in w.failing_ids[:GALLERY_ITEMS] if i in by_id]
        parts.append(f"<h3>{_e(w.id)}: {_e(w.label)}</h3>" + "".join(cards))
    if diag.clusters:
        parts.append("<h2>Failure clusters (image and question embeddings)</h2>")
        parts.append(
            _table(
                ["cluster", "size", "categories", "attributes", "nearest training", "thin"],
                [
                    [
                        str(c.id),
                        str(c.size),
                        _e(c.categories),
                        _e(c.attributes),
                        _e(c.nn_similarity),
                        "yes" if c.thin else "",
                    ]
                    for c in diag.clusters
                ],
            )
        )
    implicated = [(w.id, s) for w in diag.weaknesses if w.kind == "label_noise" for s in w.implicated]
    if implicated:
        parts.append("<h2>Training samples implicated (wrong labels near failures)</h2>")
        parts.append(
            _table(
                ["weakness", "sample", "question", "answer", "short answer", "similarity"],
                [
                    [
                        _e(wid),
                        _e(s.id),
                        _e(s.question),
                        _e(s.answer),
                        _e(s.short_answer),
                        f"{s.similarity:.3f}",
                    ]
                    for wid, s in implicated[:100]
                ],
            )
        )
    return page("diagnosis", parts, css=CSS)


def write_report(diag: Diagnosis, out: Path) -> Path:
    path = out / "report.html"
    write_text_atomic(path, render(diag, out))
    return path
