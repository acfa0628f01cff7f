"""`vlcurate diagnose RUN`: attribute every failure of an evaluation run and rank the weaknesses.

1. Failures are read from the run (`evals.results.load_run`): refusals and unreadable answers are
   attributed from their status; wrong answers are re-asked (`probe`) to tell perception from
   reasoning when a model endpoint is given (or the run's own).
2. Slices (category, benchmark attribute, both, confusion pairs) are scored by the failures they
   have beyond the rest of the run (`slices`); the best distinct ones become weaknesses.
3. Failures are clustered by image and question embeddings (the bundled scorer); the training pool,
   when given, is embedded too: a weakness or cluster far from any training sample, or whose
   attribute few training samples are about, is marked thin, and wrong-labelled training samples
   that resemble failures are implicated (label noise).
4. diagnosis.json (`Diagnosis`) and report.html are written atomically.
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vlcurate.base.atomic import write_text_atomic
from vlcurate.evals.bench import BenchFileError
from vlcurate.evals.results import EvalRun, RunFormatError, SampleResult, load_run
from vlcurate.metabolism import embed
from vlcurate.metabolism.diagnosis import (
    DIAGNOSIS_FILE,
    Cluster,
    Coverage,
    Diagnosis,
    DiagnosisError,
    Failure,
    ImplicatedSample,
    Probe,
    TrainInfo,
    Weakness,
    WeaknessKind,
)
from vlcurate.metabolism.probe import embedded_images, probe_failures, resolve_image
from vlcurate.metabolism.slices import Scored, attribute_values, rank_slices
from vlcurate.metabolism.trainpool import TrainItem
from vlcurate.vlm.client import VLMSettings

if TYPE_CHECKING:
    from vlcurate.models.scorer import ClipScorer

NOT_SCORED = ("error", "missing_image", "missing_answer")
FAILED_STATUS = {"refused": "refusal", "unparsed": "format", "no_answer": "format"}
MIN_COVER = 10  # fewer training samples about an attribute than this is thin whatever the share
NEIGHBOURS = 5  # training neighbours of each failure looked at for wrong labels
MAX_IMPLICATED = 200


@dataclass
class DiagnoseOptions:
    settings: VLMSettings | None = None  # where to re-ask failures; None: the run's endpoint, if any
    probe: bool = True
    scorer: str | None = "tiny-synth"  # None: no embeddings (no clusters, text-only coverage)
    device: str = "cpu"
    train: Sequence[TrainItem] | None = None
    train_source: str | None = None
    max_clusters: int = 8
    progress: bool = True


def is_failure(r: SampleResult) -> bool:
    return r.status in FAILED_STATUS or (r.status == "ok" and r.correct is False)


def considered(run: EvalRun) -> list[SampleResult]:
    """Rows that count: scored answers and model failures (not request errors or broken items)."""
    return [r for r in run.samples if r.status not in NOT_SCORED and (r.correct is not None or is_failure(r))]


def run_settings(run: EvalRun) -> VLMSettings | None:
    """The endpoint the run was made against (its config.json), for re-asking."""
    cfg = run.config
    url = cfg.get("endpoint") or cfg.get("base_url")
    if not url:
        return None
    return VLMSettings(
        base_url=str(url),
        model=str(cfg.get("model") or "tiny-synth"),
        api_key=cfg.get("api_key"),
        max_retries=1,
        timeout_s=30.0,
    )


def _load(run_dir: Path) -> EvalRun:
    try:
        run = load_run(run_dir)
    except RunFormatError as exc:
        raise DiagnosisError(str(exc)) from None
    if not run.samples:
        raise DiagnosisError(f"{run_dir}: the run has no answers (samples.jsonl is empty)")
    return run


def _embedded(
    rows: Sequence[SampleResult],
    images: list[str | None],
    bench: str | None,
    image_root: str | None,
    out: Path,
    warnings: list[str],
) -> list[str | None]:
    """Rows whose image is inside the benchmark file get it from there (DIAG/bench-images)."""
    missing = {r.id for r, im in zip(rows, images, strict=True) if im is None and r.image}
    if not missing or not bench:
        return images
    try:
        found = embedded_images(bench, missing, out / "bench-images", image_root)
    except (BenchFileError, OSError) as exc:
        warnings.append(f"{len(missing)} images not found and the benchmark could not be re-read: {exc}")
        return images
    if len(found) < len(missing):
        warnings.append(f"{len(missing) - len(found)} of {len(rows)} answers' images could not be found")
    return [im or found.get(r.id) for r, im in zip(rows, images, strict=True)]


def diagnose(run_dir: str | Path, out: str | Path, opts: DiagnoseOptions | None = None) -> Diagnosis:
    """Diagnose a run and write DIAG/diagnosis.json and DIAG/report.html; returns the diagnosis."""
    opts = opts or DiagnoseOptions()
    run_path, out_path = Path(run_dir), Path(out)
    run = _load(run_path)
    rows = considered(run)
    if not rows:
        raise DiagnosisError(f"{run_path}: no scored answers to diagnose (every row is an error or unscored)")
    failed = [is_failure(r) for r in rows]
    bench = run.summary.bench if run.summary else run.config.get("bench")
    root = run.config.get("image_root")
    images = [resolve_image(r.image, run_path, bench, root) for r in rows]
    warnings: list[str] = []
    images = _embedded(rows, images, bench, root, out_path, warnings)
    kinds, probes, probe_errors = _attribute(rows, failed, images, run, opts, warnings)
    scored = rank_slices(rows, failed)
    clusters: list[Cluster] = []
    cluster_of: dict[int, int] = {}
    vecs, train_vecs = _embeddings(rows, images, opts, warnings)
    if vecs is not None:
        clusters, cluster_of = _clusters(rows, failed, vecs, train_vecs, opts.max_clusters)
    weaknesses = [_weakness(s, rows, kinds) for s in scored]
    train = list(opts.train) if opts.train is not None else None
    if train is not None:
        for s, w in zip(scored, weaknesses, strict=True):
            w.coverage = _coverage(s, rows, failed, train, vecs, train_vecs)
            if w.coverage is not None and w.coverage.thin:
                w.evidence.append(
                    f"thin training data: {w.coverage.matching} of {w.coverage.train_total} training samples "
                    f"are about it ({w.coverage.share:.1%}; the benchmark has {w.coverage.bench_share:.1%})"
                )
        weaknesses += _coverage_weaknesses(clusters, weaknesses, rows)
        weaknesses += _label_noise(scored, weaknesses, rows, failed, train, vecs, train_vecs)
    weaknesses.sort(key=lambda w: -w.score)
    for i, w in enumerate(weaknesses, 1):
        w.id = f"w{i:02d}"
    fails = [
        _failure(rows[i], images[i], kinds[i], probes.get(i), cluster_of.get(i))
        for i in range(len(rows))
        if failed[i]
    ]
    n_failed = sum(failed)
    diag = Diagnosis(
        run=str(run_path),
        model=run.summary.model if run.summary else run.config.get("model"),
        bench=bench,
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        answers=len(rows),
        failures=n_failed,
        accuracy=(len(rows) - n_failed) / len(rows),
        per_category={
            c: s.model_dump() for c, s in (run.summary.per_category.items() if run.summary else [])
        },
        attribution=dict(Counter(kinds[i] for i in range(len(rows)) if failed[i])),
        probed=bool(probes),
        probe_errors=probe_errors,
        weaknesses=weaknesses,
        clusters=clusters,
        failed=fails,
        train=TrainInfo(
            source=opts.train_source or "given",
            samples=len(train),
            wrong_labels=sum(t.wrong_label for t in train),
        )
        if train is not None
        else None,
        warnings=warnings,
        vocabulary=vocabulary(rows),
    )
    write_diagnosis(diag, out_path)
    return diag


MAX_VOCABULARY = 64  # more distinct values than this is an id or free text, not an attribute


def vocabulary(rows: Sequence[SampleResult]) -> dict[str, list[str]]:
    """Per meta key, the distinct values that are words (letters and spaces, up to three words), for
    keys with 2 to MAX_VOCABULARY of them: the benchmark's own names for what its items are about."""
    seen: dict[str, set[str]] = {}
    for r in rows:
        for k, v in r.meta.items():
            if isinstance(v, str) and v.replace(" ", "").isalpha() and len(v.split()) <= 3:
                seen.setdefault(k, set()).add(v.lower())
    return {k: sorted(vs) for k, vs in sorted(seen.items()) if 2 <= len(vs) <= MAX_VOCABULARY}


def write_diagnosis(diag: Diagnosis, out: Path) -> None:
    from vlcurate.metabolism.diagnose_report import write_report

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / DIAGNOSIS_FILE, diag.model_dump_json(indent=2))
    write_report(diag, out)


# ---- attribution ----------------------------------------------------------------------------------
def _attribute(
    rows: Sequence[SampleResult],
    failed: Sequence[bool],
    images: Sequence[str | None],
    run: EvalRun,
    opts: DiagnoseOptions,
    warnings: list[str],
) -> tuple[list[str], dict[int, Probe], int]:
    kinds = ["" for _ in rows]
    wrong: list[int] = []
    for i, r in enumerate(rows):
        if failed[i]:
            kinds[i] = FAILED_STATUS.get(r.status, "wrong")
            if kinds[i] == "wrong" and r.type != "caption":  # a caption has no short answer to re-ask for
                wrong.append(i)
    probes: dict[int, Probe] = {}
    settings = opts.settings or run_settings(run)
    if not opts.probe or not wrong:
        return kinds, probes, 0
    if settings is None:
        warnings.append("wrong answers were not re-asked: no --endpoint given and the run names none")
        return kinds, probes, 0
    got = probe_failures(
        [rows[i] for i in wrong], [images[i] for i in wrong], settings, progress=opts.progress
    )
    errors = 0
    for i, p in zip(wrong, got, strict=True):
        if p.from_description_correct is None:
            errors += 1
            probes[i] = p
            continue
        probes[i] = p
        kinds[i] = "reasoning" if p.from_description_correct else "perception"
    if errors == len(wrong):
        first = next((p.error for p in got if p.error), "no answer")
        warnings.append(
            f"the model at {settings.base_url} returned nothing usable for all {errors} re-asked failures "
            f"({first}); wrong answers stay unattributed"
        )
        return kinds, {}, errors
    if errors:
        warnings.append(
            f"{errors} of {len(wrong)} re-asked failures got no usable answer; they stay unattributed"
        )
    return kinds, probes, errors


def _weakness_kind(kinds: Counter[str]) -> WeaknessKind:
    named = Counter({k: v for k, v in kinds.items() if k != "wrong"})
    if not named:
        return "perception"
    top = named.most_common(1)[0][0]
    return top  # type: ignore[return-value]


def _weakness(s: Scored, rows: Sequence[SampleResult], kinds: Sequence[str]) -> Weakness:
    sl = s.slice
    kc = Counter(kinds[i] for i in sl.failing)
    kind = _weakness_kind(kc)
    evidence = [
        f"{s.f} of {s.n} answers fail ({s.rate:.0%}, "
        f"95% CI {s.ci95[0]:.0%}-{s.ci95[1]:.0%}) against {s.rest_rate:.0%} in the rest of the run",
        "attribution: " + ", ".join(f"{k} {v}" for k, v in kc.most_common()),
    ]
    if kc.get("wrong"):
        evidence.append(f"{kc['wrong']} wrong answers were not probed: counted as perception")
    if sl.confusions:
        evidence.append("confusions: " + ", ".join(f"{k} x{v}" for k, v in sl.confusions.most_common()))
    ids = list(dict.fromkeys(rows[i].id for i in sl.failing))
    return Weakness(
        id="",
        kind=kind,
        category=sl.category,
        attribute=dict(sl.attribute),
        label=f"{sl.name} ({kind})",
        score=round(s.score, 4),
        n=len(sl.rows),
        failures=len(sl.failing),
        failure_rate=round(s.rate, 6),
        ci95=(round(s.ci95[0], 6), round(s.ci95[1], 6)),
        rest_failure_rate=round(s.rest_rate, 6),
        kinds=dict(kc),
        confusions=dict(sl.confusions),
        evidence=evidence,
        failing_ids=ids,
    )


def _failure(
    r: SampleResult, image: str | None, kind: str, probe: Probe | None, cluster: int | None
) -> Failure:
    return Failure(
        id=r.id,
        repeat=r.repeat,
        category=r.category,
        type=r.type,
        question=r.question,
        answer=r.answer,
        extracted=r.extracted,
        response=r.response,
        status=r.status,
        image=image or r.image,
        meta=r.meta,
        kind=kind,
        probe=probe,
        cluster=cluster,
    )


# ---- embeddings, clusters, coverage -----------------------------------------------------------------
def _embeddings(
    rows: Sequence[SampleResult], images: Sequence[str | None], opts: DiagnoseOptions, warnings: list[str]
) -> tuple[np.ndarray | None, np.ndarray | None]:
    if opts.scorer is None:
        return None, None
    try:
        scorer = _scorer(opts.scorer, opts.device)
    except Exception as exc:  # missing weights, unknown name: diagnose without embeddings
        warnings.append(f"no embeddings ({opts.scorer}: {exc}); clusters and embedding coverage skipped")
        return None, None
    bar = opts.progress  # a training pool can be large: show progress
    vecs = embed.embed_items(
        scorer, list(images), [r.question for r in rows], label="embedding answers" if bar else None
    )
    train_vecs = None
    if opts.train:
        train_vecs = embed.embed_items(
            scorer,
            [t.image for t in opts.train],
            [t.question for t in opts.train],
            label="embedding the training pool" if bar else None,
        )
    return vecs, train_vecs


@functools.lru_cache(maxsize=2)
def _scorer(name: str, device: str) -> ClipScorer:
    """Loaded once per process: a loop diagnoses every round with the same scorer."""
    from vlcurate.models.loader import load_scorer

    return load_scorer(name, device=device)


def _clusters(
    rows: Sequence[SampleResult],
    failed: Sequence[bool],
    vecs: np.ndarray,
    train_vecs: np.ndarray | None,
    max_clusters: int,
) -> tuple[list[Cluster], dict[int, int]]:
    fi = [i for i in range(len(rows)) if failed[i]]
    if len(fi) < 2:
        return [], {}
    k = max(1, min(max_clusters, len(fi) // 4))
    labels = embed.kmeans(vecs[fi], k)
    nn_fail: np.ndarray | None = None
    baseline = None
    if train_vecs is not None and len(train_vecs):
        nn_fail = embed.nearest(vecs[fi], train_vecs)[0][:, 0]
        passed = [i for i in range(len(rows)) if not failed[i]]
        if passed:
            baseline = float(embed.nearest(vecs[passed], train_vecs)[0][:, 0].mean())
    out: list[Cluster] = []
    cluster_of: dict[int, int] = {}
    for j in range(int(labels.max()) + 1):
        members = [fi[m] for m in np.flatnonzero(labels == j)]
        if not members:
            continue
        attrs: Counter[str] = Counter()
        for i in members:
            attrs.update(f"{a}={v}" for a, v in attribute_values(rows[i]).items())
        nn = float(nn_fail[labels == j].mean()) if nn_fail is not None else None
        cid = len(out)
        for i in members:
            cluster_of[i] = cid
        out.append(
            Cluster(
                id=cid,
                size=len(members),
                ids=list(dict.fromkeys(rows[i].id for i in members)),
                categories=dict(Counter(rows[i].category for i in members).most_common()),
                attributes=dict(attrs.most_common(6)),
                nn_similarity=round(nn, 4) if nn is not None else None,
                thin=bool(nn is not None and baseline is not None and nn < baseline - 0.05),
            )
        )
    out.sort(key=lambda c: -c.size)
    return out, cluster_of


def _values(attribute: dict[str, str]) -> list[str]:
    """The attribute's values that a training text can name (words, not flags or numbers)."""
    return [
        v for val in attribute.values() for v in val.split("|") if v.isalpha() and v not in ("true", "false")
    ]


def _about(item: TrainItem, values: Sequence[str], category: str | None) -> bool:
    if values:
        return any(re.search(rf"\b{re.escape(v)}\b", item.text) for v in values)
    return category is not None and str(item.meta.get("kind", "")) == category


def _coverage(
    s: Scored,
    rows: Sequence[SampleResult],
    failed: Sequence[bool],
    train: Sequence[TrainItem],
    vecs: np.ndarray | None,
    train_vecs: np.ndarray | None,
) -> Coverage | None:
    sl = s.slice
    values = _values(sl.attribute)
    if not values and sl.category is None:
        return None  # nothing a training text could be about (present=true, n_objects=3)
    matching = sum(1 for t in train if _about(t, values, sl.category))
    share = matching / len(train) if train else 0.0
    bench_ids = {r.id for r in rows}
    slice_ids = {rows[i].id for i in sl.rows}
    bench_share = len(slice_ids) / len(bench_ids) if bench_ids else 0.0
    nn_f = nn_p = None
    if vecs is not None and train_vecs is not None and len(train_vecs):
        f_idx = [i for i in sl.rows if failed[i]]
        p_idx = [i for i in range(len(rows)) if not failed[i]]
        if f_idx:
            nn_f = round(float(embed.nearest(vecs[f_idx], train_vecs)[0][:, 0].mean()), 4)
        if p_idx:
            nn_p = round(float(embed.nearest(vecs[p_idx], train_vecs)[0][:, 0].mean()), 4)
    thin = matching < MIN_COVER or share < 0.5 * bench_share
    return Coverage(
        train_total=len(train),
        matching=matching,
        share=round(share, 6),
        bench_share=round(bench_share, 6),
        nn_similarity_failures=nn_f,
        nn_similarity_passes=nn_p,
        thin=thin,
    )


def _coverage_weaknesses(
    clusters: Sequence[Cluster], found: Sequence[Weakness], rows: Sequence[SampleResult]
) -> list[Weakness]:
    """Thin clusters whose failures no slice weakness already explains."""
    out: list[Weakness] = []
    explained = {i for w in found for i in w.failing_ids}
    for c in clusters:
        if not c.thin:
            continue
        new = [i for i in c.ids if i not in explained]
        if len(new) < max(2, len(c.ids) // 2):
            continue
        top = next(iter(c.attributes), None)
        attribute = dict([top.split("=", 1)]) if top else {}
        cat = next(iter(c.categories), None)
        out.append(
            Weakness(
                id="",
                kind="coverage",
                category=cat,
                attribute=attribute,
                label=f"cluster {c.id} ({top or cat}): far from the training data",
                score=round(len(new) * 0.5, 4),
                n=c.size,
                failures=c.size,
                failure_rate=1.0,
                ci95=(0.0, 1.0),
                rest_failure_rate=0.0,
                evidence=[
                    f"{c.size} failures cluster together; their nearest training sample is at similarity "
                    f"{c.nn_similarity} (lower than the items answered right)"
                ],
                failing_ids=new,
            )
        )
    return out


def _label_noise(
    scored: Sequence[Scored],
    found: Sequence[Weakness],
    rows: Sequence[SampleResult],
    failed: Sequence[bool],
    train: Sequence[TrainItem],
    vecs: np.ndarray | None,
    train_vecs: np.ndarray | None,
) -> list[Weakness]:
    """Wrong-labelled training samples near a weakness's failures (or about its attribute)."""
    wrong = [j for j, t in enumerate(train) if t.wrong_label]
    if not wrong:
        return []
    out: list[Weakness] = []
    for s, w in zip(scored, found, strict=False):
        f_idx = s.slice.failing
        near: dict[int, tuple[float, str | None]] = {}
        if vecs is not None and train_vecs is not None and len(train_vecs):
            sims, idx = embed.nearest(vecs[f_idx], train_vecs, NEIGHBOURS)
            for a, i in enumerate(f_idx):
                for sim, j in zip(sims[a], idx[a], strict=True):
                    if train[int(j)].wrong_label and sim > near.get(int(j), (-2.0, None))[0]:
                        near[int(j)] = (float(sim), rows[i].id)
        values = _values(s.slice.attribute)
        for j in wrong:
            if j not in near and values and _about(train[j], values, s.slice.category):
                sim = (
                    float((vecs[f_idx] @ train_vecs[j]).max())
                    if vecs is not None and train_vecs is not None
                    else 0.0
                )
                near[j] = (sim, None)
        if not near:
            continue
        picked = sorted(near.items(), key=lambda kv: -kv[1][0])[:MAX_IMPLICATED]
        implicated = [
            ImplicatedSample(
                id=train[j].id,
                question=train[j].question,
                answer=train[j].answer,
                short_answer=train[j].short_answer,
                reason=f"its answer {train[j].answer!r} disagrees with its short answer "
                f"{train[j].short_answer!r}",
                similarity=round(sim, 4),
                nearest_failure=fid,
            )
            for j, (sim, fid) in picked
        ]
        w.implicated = implicated
        out.append(
            Weakness(
                id="",
                kind="label_noise",
                category=w.category,
                attribute=dict(w.attribute),
                label=f"{s.slice.name}: {len(implicated)} wrong-labelled training samples like its failures",
                score=round(min(w.score, len(implicated)) * 0.25, 4),
                n=len(implicated),
                failures=len(f_idx),
                failure_rate=w.failure_rate,
                ci95=w.ci95,
                rest_failure_rate=w.rest_failure_rate,
                evidence=[
                    f"{len(implicated)} training samples about {s.slice.name} or among the "
                    f"{NEIGHBOURS} nearest neighbours of its failures state an answer that disagrees "
                    "with their own short answer"
                ],
                failing_ids=list(w.failing_ids),
                implicated=implicated,
            )
        )
    return out
