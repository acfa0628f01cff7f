"""`build`: request -> spec -> collection -> image tools -> labels -> supervision -> export.

Resumable: stage results live in a work folder beside `--out` (`.NAME.build/`, keyed by a
fingerprint of the spec, pools and options); a re-run after a failure or kill reuses the cleaned
pool and every label already made. The export is staged and renamed into place at the end.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from vlcurate.base.atomic import write_parquet_atomic
from vlcurate.builder.build_report import (
    alr_note,
    load_removed_thumbs,
    save_removed_thumbs,
    write_build_report,
)
from vlcurate.builder.calibrate import Calibration, calibrate_on, reported_alr, trusted_sample
from vlcurate.builder.collect import (
    PoolImage,
    class_text_embeddings,
    embed_images,
    read_pool,
    retrieve,
)
from vlcurate.builder.costs import CountingScorer, Removed, StageLog
from vlcurate.builder.crowd import CrowdClient, CrowdConfig, verify_by_crowd
from vlcurate.builder.demand import analyse_with_vlm, parse_request
from vlcurate.builder.export import DEFAULT_FORMATS, check_formats, dataset_card, export_all
from vlcurate.builder.formats import (
    Ann,
    Dataset,
    Item,
    mask_to_rle,
    read_dataset,
    rle_to_mask,
    write_json_atomic,
    write_text_atomic,
)
from vlcurate.builder.label import Label, ZeroShot, box_masks, make_labeller, open_rgb
from vlcurate.builder.spec import DatasetSpec, SpecError, Task, load_spec, spec_from_dict
from vlcurate.builder.supervise import (
    CropVerifier,
    Verifier,
    VlmVerifier,
    class_balance,
    ssim_stats,
    supervise,
)
from vlcurate.builder.tools import ToolResult, clean_pool, drop_counts
from vlcurate.dedup.reference import ReferenceIndex
from vlcurate.io.staged_dir import check_out_dir, commit, make_staging
from vlcurate.ops.builder_ops import EnhanceParams

Progress = Callable[[str, str], None]


class BuildConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    request: str = ""
    pools: list[str] = Field(default_factory=list)
    out: Path
    task: Task | None = None
    images_per_class: int | None = Field(None, ge=1)
    expand: Path | None = None
    calibrate: Path | None = None  # trusted labels to measure the verifier on (default: --expand's)
    spec_file: Path | None = None
    formats: list[str] | None = None
    scorer: str = "tiny-synth"
    device: str = "cpu"
    detector: str | None = None  # owlv2 | grounding-dino | a hub name; None: offline region proposals
    verifier: Literal["crop", "vlm"] = "crop"
    vlm_url: str | None = None  # demand analysis and the VLM verifier use it when set
    vlm_model: str = "tiny-synth"
    allow_download: bool = False
    oversample: float = Field(2.0, ge=1.0)
    max_rounds: int = Field(3, ge=1, le=10)
    enhance: EnhanceParams | None = None
    overwrite: bool = False
    dry_run: bool = False
    platform: CrowdConfig | None = None  # label verification by the crowd (`builder.crowd`)


def _quiet(stage: str, message: str) -> None:
    return None


def make_spec(cfg: BuildConfig, existing: Dataset | None) -> DatasetSpec:
    """The spec from --spec, else the VLM (when a URL is given), else the offline parser."""
    if cfg.spec_file is not None:
        spec = load_spec(cfg.spec_file)
        if cfg.task or cfg.images_per_class:
            data = spec.model_dump()
            data["task"] = cfg.task or spec.task
            data["images_per_class"] = cfg.images_per_class or spec.images_per_class
            spec = spec_from_dict(data, str(cfg.spec_file))
        return spec
    if not cfg.request.strip() and existing is not None:
        present = existing.counts()["per_class"]  # the classes the dataset uses, not every category listed
        names = [c for c in existing.classes if present.get(c)] or existing.classes
        request = f"{cfg.images_per_class or 100} images each of {', '.join(names)}"
        return parse_request(request, task=cfg.task or "classify", images_per_class=cfg.images_per_class)
    if cfg.vlm_url:
        from vlcurate.vlm.client import VLMSettings

        spec = analyse_with_vlm(
            cfg.request, VLMSettings(base_url=cfg.vlm_url, model=cfg.vlm_model), task=cfg.task
        )
        if cfg.images_per_class:
            spec = spec.model_copy(update={"images_per_class": cfg.images_per_class})
        return spec
    return parse_request(cfg.request, task=cfg.task, images_per_class=cfg.images_per_class)


def _fingerprint(cfg: BuildConfig, spec: DatasetSpec) -> str:
    data = {
        "spec": spec.model_dump(mode="json"),
        "pools": cfg.pools,
        "expand": str(cfg.expand or ""),
        "calibrate": str(cfg.calibrate or ""),
        "scorer": cfg.scorer,
        "detector": cfg.detector,
        "verifier": cfg.verifier,
        "enhance": cfg.enhance.model_dump() if cfg.enhance else None,
        "oversample": cfg.oversample,
        "platform": cfg.platform.url if cfg.platform else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def work_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.build"


# ----- checkpoints ------------------------------------------------------------------------------


def _save_pool(path: Path, images: list[PoolImage]) -> None:
    table = pa.table(
        {
            "uid": [im.uid for im in images],
            "key": [im.key for im in images],
            "data": pa.array([im.data for im in images], pa.binary()),
            "source": [im.source for im in images],
            "license": [im.license for im in images],
            "caption": [im.caption for im in images],
            "sha256": [im.sha256 for im in images],
        }
    )
    write_parquet_atomic(path, table)


def _load_pool(path: Path) -> list[PoolImage]:
    t = pq.read_table(path).to_pylist()
    return [
        PoolImage(r["uid"], r["key"], r["data"], r["source"], r["license"], r["caption"], r["sha256"])
        for r in t
    ]


def _label_to_json(lab: Label) -> dict[str, Any]:
    d = lab.to_json()
    d["probs"] = lab.probs
    d["mask"] = mask_to_rle(lab.mask) if lab.mask is not None else None
    return d


def _label_from_json(d: dict[str, Any]) -> Label:
    return Label(
        d["class"],
        d["confidence"],
        d["model"],
        tuple(d["box"]) if d["box"] else None,
        rle_to_mask(d["mask"]) if d.get("mask") else None,
        d["verified"],
        d["verifier"],
        d["verifier_confidence"],
        d.get("probs"),
        d.get("corrected_from"),
    )


# ----- the stages -------------------------------------------------------------------------------


def _trusted(cfg: BuildConfig, existing: Dataset | None) -> tuple[str, Dataset] | None:
    """The labels the verifier is measured on: --calibrate, else the dataset being expanded."""
    if cfg.calibrate is not None:
        return str(cfg.calibrate), read_dataset(cfg.calibrate, masks=False)
    if existing is not None and cfg.expand is not None:
        return str(cfg.expand), existing
    return None


def _existing(cfg: BuildConfig) -> tuple[Dataset | None, ReferenceIndex | None]:
    if cfg.expand is None:
        return None, None
    ds = read_dataset(cfg.expand, masks=False)
    index = ReferenceIndex()
    for it in ds.items:
        index.add(f"{it.split}/{it.name}", it.read())
    return ds, index


def _collect(
    cfg: BuildConfig,
    spec: DatasetSpec,
    work: Path,
    reference: ReferenceIndex | None,
    progress: Progress,
    log: StageLog,
) -> tuple[list[PoolImage], dict[str, Any], bool]:
    pool_file, info_file = work / "pool.parquet", work / "tools.json"
    if pool_file.is_file() and info_file.is_file() and "tools" in log.stages:
        progress("collect", "resumed: cleaned pool from the last run")
        log.mark_resumed("collect", "tools")
        return _load_pool(pool_file), json.loads(info_file.read_text()), True
    log.reset("collect", "tools")
    t0 = time.perf_counter()
    with log.stage("collect") as st:
        images, report = read_pool(cfg.pools, spec)
        st.saw, st.kept = report.read, len(images)
        st.removed_unseen = {
            k: v
            for k, v in (
                ("unreadable", report.unreadable),
                ("licence not accepted", report.license_rejected),
                ("byte duplicate in the pool", report.duplicates_in_pool),
            )
            if v
        }
    t_read = time.perf_counter() - t0
    progress(
        "collect",
        f"{len(images)} images read ({report.unreadable} unreadable, "
        f"{report.license_rejected} licence rejected, {report.duplicates_in_pool} byte duplicates)",
    )
    by_uid = {im.uid: im for im in images}
    with log.stage("tools") as st:
        # thumbnails of what the tools remove, taken before enhancement can change the bytes
        result: ToolResult = clean_pool(images, spec, reference=reference, enhance=cfg.enhance)
        kept = [images[i] for i in result.kept]
        st.saw, st.kept = len(images), len(kept)
        st.removed = [Removed(uid=u, reason=r, source=by_uid[u].source) for u, r in result.reasons.items()]
    save_removed_thumbs(work / "removed.parquet", [by_uid[u] for u in result.reasons])
    progress(
        "tools",
        f"{len(kept)} of {len(images)} images pass the image tools: {json.dumps(drop_counts(result))}",
    )
    info = {
        "pool": report.to_dict(),
        "read_seconds": round(t_read, 3),
        "steps": result.steps,
        "dropped": drop_counts(result),
        "ssim_to_original": result.ssim_to_original,
        "copies_of_expanded": result.copy_of,
        "drop_reasons": result.reasons,
    }
    _save_pool(pool_file, kept)
    write_json_atomic(info_file, info)
    log.save(work / "costs.json")
    return kept, info, False


def _verifier(cfg: BuildConfig, zs: ZeroShot, spec: DatasetSpec) -> Verifier:
    if cfg.verifier == "vlm":
        if not cfg.vlm_url:
            raise ValueError("--verifier vlm needs --vlm-url")
        from vlcurate.vlm.client import VLMSettings

        return VlmVerifier(VLMSettings(base_url=cfg.vlm_url, model=cfg.vlm_model))
    return CropVerifier(zs, spec.class_names)


def _label_rounds(
    cfg: BuildConfig,
    spec: DatasetSpec,
    pool: list[PoolImage],
    work: Path,
    progress: Progress,
    log: StageLog,
    trusted: tuple[str, Dataset] | None = None,
) -> tuple[dict[str, list[Label]], list[dict[str, Any]], dict[str, float], Calibration | None]:
    from vlcurate.models.loader import load_scorer

    labels_file = work / "labels.json"
    labelled: dict[str, list[Label]] = {}
    if labels_file.is_file() and "label" in log.stages:
        saved = json.loads(labels_file.read_text())
        labelled = {u: [_label_from_json(d) for d in labs] for u, labs in saved.items()}
        progress("label", f"resumed: {len(labelled)} images already labelled")
        log.mark_resumed("label", "verify")
    else:
        log.reset("label", "verify")
    log.reset("embed", "retrieve")  # done again on every run
    timings: dict[str, float] = dict.fromkeys(("embed", "retrieve", "label", "verify"), 0.0)
    t0 = time.perf_counter()
    with log.stage("embed") as st:
        scorer = CountingScorer(
            load_scorer(cfg.scorer, device=cfg.device, allow_download=cfg.allow_download), log
        )
        text = class_text_embeddings(scorer, spec)
        zs = ZeroShot(scorer, spec, text)
        emb = embed_images(scorer, [im.data for im in pool])
        st.saw = st.kept = len(pool)
    log.models["scorer"] = f"{scorer.name} ({scorer.device}, {scorer.precision})"
    timings["embed"] += time.perf_counter() - t0
    labeller = make_labeller(
        spec, scorer, detector=cfg.detector, allow_download=cfg.allow_download, zero_shot=zs
    )
    verifier = _verifier(cfg, zs, spec)
    log.models.update(labeller=labeller.model, verifier=verifier.model)
    calibration = calibrate_on(trusted, spec, labeller, verifier, work, progress, log)
    by_uid = {im.uid: i for i, im in enumerate(pool)}
    rounds: list[dict[str, Any]] = []
    need = spec.class_names
    for r in range(cfg.max_rounds):
        # reach twice as far each round
        per_class = int(np.ceil(spec.images_per_class * cfg.oversample * 2**r))
        t0 = time.perf_counter()
        with log.stage("retrieve") as st:
            sub = np.array([spec.class_names.index(c) for c in need])
            found = retrieve(emb, text[sub], per_class, exclude=lambda i: pool[i].uid in labelled)
            st.saw += len(pool)
            st.kept += len(found.chosen)
        timings["retrieve"] += time.perf_counter() - t0
        todo = found.chosen
        progress("label", f"round {r + 1}: {len(todo)} new candidates for {', '.join(need)}")
        if todo:
            datas = [pool[i].data for i in todo]
            t0 = time.perf_counter()
            with log.stage("label") as st:
                labs = labeller.label(datas)
                if cfg.detector:  # one detector call per image (and one SAM call per image with boxes)
                    log.count(detector_calls=len(datas))
                    if spec.task == "segment":
                        log.count(sam_calls=sum(1 for x in labs if x))
                if spec.task == "segment":
                    box_masks(datas, labs)
                st.saw += len(datas)
                st.kept += sum(1 for x in labs if x)
                log.count(labels_made=sum(len(x) for x in labs))
            timings["label"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            with log.stage("verify") as st:
                verifier.verify(datas, labs)
                if cfg.verifier == "vlm":
                    log.count(vlm_requests=sum(len(x) for x in labs))
                st.saw += sum(len(x) for x in labs)
                st.kept += sum(1 for x in labs for lab in x if lab.verified)
            timings["verify"] += time.perf_counter() - t0
            for i, lab in zip(todo, labs, strict=True):
                labelled[pool[i].uid] = lab
            write_json_atomic(
                labels_file, {u: [_label_to_json(x) for x in v] for u, v in labelled.items()}, indent=None
            )
            log.save(work / "costs.json")
        decision = supervise(list(labelled.values()), spec.class_names, min_confidence=spec.min_confidence)
        have = _per_class_images(list(labelled.values()), decision.kept, spec)
        short = [c for c in spec.class_names if have[c] < spec.images_per_class]
        unreliable = [
            c
            for c, m in decision.metrics["alr_per_class"].items()
            # corrected for the verifier's measured error like the dataset's ALR, else the raw share
            if (a := reported_alr(m, calibration, True)["alr"]) is not None and a < spec.min_reliability
        ]
        rounds.append(
            {
                "round": r + 1,
                "candidates": len(todo),
                "usable_images_per_class": have,
                "short": short,
                "below_reliability": unreliable,
            }
        )
        need = sorted(set(short) | set(unreliable), key=spec.class_names.index)
        if not need or not todo or len(labelled) >= len(pool):
            break
        progress(
            "supervise",
            f"back to collection for {', '.join(need)} (short: {short}, unreliable: {unreliable})",
        )
    del by_uid
    return labelled, rounds, dict(timings), calibration


def _per_class_images(
    all_labels: list[list[Label]], kept: list[list[Label]], spec: DatasetSpec
) -> dict[str, int]:
    """Images usable per class: for classify the image's kept label; for detect, images whose every
    label was kept."""
    have = dict.fromkeys(spec.class_names, 0)
    for labs, ok in zip(all_labels, kept, strict=True):
        if not labs or len(ok) != len(labs):
            continue
        for c in {lab.cls for lab in ok}:
            have[c] += 1
    return have


def _select(
    spec: DatasetSpec, pool: list[PoolImage], labelled: dict[str, list[Label]]
) -> tuple[list[str], list[tuple[str, Label, str]], dict[str, Any]]:
    """The images to export (balanced to images_per_class) and the review queue."""
    uids = list(labelled)
    decision = supervise([labelled[u] for u in uids], spec.class_names, min_confidence=spec.min_confidence)
    queue: list[tuple[str, Label, str]] = [(uids[i], lab, why) for i, lab, why in decision.queued]
    usable = [
        u for u, ok in zip(uids, decision.kept, strict=True) if labelled[u] and len(ok) == len(labelled[u])
    ]
    for u, ok in zip(uids, decision.kept, strict=True):  # an image with any doubtful label waits as a whole
        if labelled[u] and 0 < len(ok) < len(labelled[u]):
            queue.extend((u, lab, "image held back: another label in it is doubtful") for lab in ok)
    score = {u: float(np.mean([lab.confidence for lab in labelled[u]])) for u in usable}
    usable.sort(key=lambda u: (-score[u], u))
    chosen: list[str] = []
    count = dict.fromkeys(spec.class_names, 0)
    for u in usable:
        classes = {lab.cls for lab in labelled[u]}
        wanted = any(count[c] < spec.images_per_class for c in classes)
        # an image with several classes may overshoot a class that is already full, a little
        fits = spec.task == "classify" or all(count[c] < spec.images_per_class * 1.25 for c in classes)
        if wanted and fits:
            chosen.append(u)
            for c in classes:
                count[c] += 1
    return chosen, queue, decision.metrics


def _assign_splits(spec: DatasetSpec, chosen: list[str], labelled: dict[str, list[Label]]) -> dict[str, str]:
    """Stratified by each image's first class, in a fixed order (sha1 of the uid)."""
    by_class: dict[str, list[str]] = {}
    for u in chosen:
        by_class.setdefault(labelled[u][0].cls, []).append(u)
    out: dict[str, str] = {}
    s = spec.splits
    for members in by_class.values():
        members.sort(key=lambda u: hashlib.sha1(u.encode()).hexdigest())
        n = len(members)
        n_train = round(n * s.train)
        n_val = round(n * s.val) if s.test > 0 else n - n_train
        for i, u in enumerate(members):
            out[u] = "train" if i < n_train else "val" if i < n_train + n_val else "test"
    return out


def _ext(data: bytes) -> str:
    from vlcurate.base.images import sniff_image_ext

    return sniff_image_ext(data) or "png"


def plan(cfg: BuildConfig) -> dict[str, Any]:
    """--dry-run: the spec and what the build would do and cost, without reading image bytes twice."""
    existing = read_dataset(cfg.expand, masks=False) if cfg.expand else None
    spec = make_spec(cfg, existing)
    from vlcurate.io.sources import open_source

    n = 0
    for p in cfg.pools:
        src = open_source(p)
        n += sum(1 for sh in src.shards() for _ in src.iter_samples(sh))
    k = len(spec.classes)
    candidates = min(n, int(spec.images_per_class * cfg.oversample * k))
    trusted = _trusted(cfg, existing)
    n_trusted = len(trusted_sample(trusted[1], spec.class_names, spec.task)) if trusted else 0
    calls: dict[str, int | str] = {
        "image_embeddings": n,
        "labeller_calls": candidates + n_trusted,
        "verifier_calls": candidates + n_trusted,
        "vlm_calls": candidates + n_trusted if cfg.verifier == "vlm" else 0,
        "calibration_images": n_trusted,
        "platform_images": candidates if cfg.platform and spec.task == "classify" else 0,
    }
    if cfg.platform and spec.task != "classify":
        # detect/segment builds publish one crop per labelled box (+ one background check per 8 boxes);
        # how many boxes there are is known only after labelling
        calls["platform_crops"] = "one per labelled box, plus one background check per 8 boxes"
    # benchmarks/builder.py on 2 shared cores with tiny-synth: ~16 s per 1,000 pool images (read, tools,
    # dedup, embed) and ~8 s per 1,000 candidates (label, check, export); real models are far slower
    seconds = n / 1000 * 16.0 + candidates / 1000 * 8.0
    return {
        "spec": spec.model_dump(mode="json"),
        "pool_images": n,
        "formats": cfg.formats or list(DEFAULT_FORMATS[spec.task]),
        "stages": [
            "demand",
            "collect",
            "tools",
            "embed",
            *(["calibrate"] if n_trusted else []),
            "retrieve",
            "label",
            "verify",
            *(["platform"] if cfg.platform else []),
            "supervise",
            "export",
        ],
        "model_calls": calls,
        "estimated_seconds": round(seconds, 1),
        "out": str(cfg.out),
    }


def build(cfg: BuildConfig, progress: Progress = _quiet) -> dict[str, Any]:
    """Run every stage; returns the summary also written as build.json."""
    out = Path(cfg.out)
    check_out_dir(out, cfg.overwrite)
    if not cfg.pools:
        raise ValueError("no pool given: pass --pool with folders, shards, Parquet files or manifests")
    t_start = time.perf_counter()
    log = StageLog()
    with log.stage("demand"):
        existing, reference = _existing(cfg)
        trusted = _trusted(cfg, existing)
        spec = make_spec(cfg, existing)
        if cfg.vlm_url and cfg.spec_file is None and (existing is None or cfg.request.strip()):
            log.count(vlm_requests=1)
    formats = cfg.formats or list(DEFAULT_FORMATS[spec.task])
    check_formats(spec.task, formats)
    if cfg.platform is not None:
        ping = CrowdClient(cfg.platform)
        try:
            ping.ping()
        finally:
            ping.close()
    progress(
        "demand", f"{spec.task}: {', '.join(spec.class_names)}, {spec.images_per_class} images per class"
    )
    work = work_dir_for(out)
    fp = _fingerprint(cfg, spec)
    if work.exists() and (work / "fingerprint").is_file() and (work / "fingerprint").read_text() != fp:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    earlier = StageLog.load(work / "costs.json")
    for name, st in earlier.stages.items():
        if name != "demand":
            log.stages[name] = st
    write_text_atomic(work / "fingerprint", fp)
    write_text_atomic(work / "spec.yaml", spec.to_yaml())
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    pool, tools_info, resumed_pool = _collect(cfg, spec, work, reference, progress, log)
    timings["collect+tools"] = time.perf_counter() - t0
    resumed_labels = (work / "labels.json").is_file() and "label" in log.stages
    labelled, rounds, label_timings, calibration = _label_rounds(
        cfg, spec, pool, work, progress, log, trusted
    )
    crowd = (
        verify_by_crowd(cfg.platform, spec, pool, labelled, trusted, work, fp, progress, log)
        if cfg.platform
        else None
    )
    timings.update(label_timings)
    t0 = time.perf_counter()
    log.reset("supervise", "export")
    with log.stage("supervise") as st:
        chosen, queue, metrics = _select(spec, pool, labelled)
        metrics["alr"] = reported_alr(metrics["alr"], calibration, trusted is not None)
        if calibration is not None:  # each class corrected the same way (the raw share kept beside it)
            metrics["alr_per_class"] = {
                c: reported_alr(m, calibration, True) for c, m in metrics["alr_per_class"].items()
            }
        if crowd is not None:  # ALR from the crowd's verified agreement; the local check beside it
            metrics["platform"] = {k: v for k, v in crowd.items() if k != "alr"}
            if crowd["alr"]["checked"]:
                metrics["alr"] = crowd["alr"] | {"local": metrics["alr"]}
            else:  # nothing verified in time: the local figure stands, and says why
                metrics["alr"]["why_not_platform"] = "the crowd verified no label before the timeout"
        st.saw, st.kept = len(labelled), len(chosen)
        src = {im.uid: im.source for im in pool}
        held = {u: why for u, _, why in queue}
        st.removed = [Removed(uid=u, reason=why, source=src[u]) for u, why in held.items()]
    by_uid = {im.uid: im for im in pool}
    splits = _assign_splits(spec, chosen, labelled)
    items = []
    for u in chosen:
        im = by_uid[u]
        w, h = open_rgb(im.data).size
        anns = [Ann(lab.cls, lab.box, lab.mask if spec.task == "segment" else None) for lab in labelled[u]]
        items.append(Item(f"{u[:20]}.{_ext(im.data)}", splits[u], w, h, anns, data=im.data))
    ds = Dataset(spec.class_names, items)
    counts = ds.counts()
    balance_counts = (
        counts["per_class"] if spec.task != "classify" else Counter(a.cls for it in items for a in it.anns)
    )
    metrics["balance"] = class_balance({c: int(balance_counts.get(c, 0)) for c in spec.class_names})
    metrics["ssim_to_original"] = ssim_stats(tools_info["ssim_to_original"])
    metrics["removed"] = tools_info["dropped"]
    short = {
        c: n for c, n in counts["per_class"].items() if spec.task == "classify" and n < spec.images_per_class
    }
    progress(
        "supervise",
        f"{alr_note(metrics['alr'])}, CBI {metrics['balance']['cbi']:.4f}, "
        f"{len(queue)} labels queued for review",
    )
    staging = make_staging(out)
    t_export = time.perf_counter()
    try:
        exported = export_all(ds, formats, staging)
        pool_by = {im.uid: im for im in pool}
        chosen_set = set(chosen)
        lines = []
        for it, u in zip(items, chosen, strict=True):
            im = pool_by[u]
            lines.append(
                json.dumps(
                    {
                        "file": it.name,
                        "split": it.split,
                        "uid": u,
                        "source": im.source,
                        "license": im.license,
                        "sha256": im.sha256,
                        "labels": [lab.to_json() for lab in labelled[u]],
                    }
                )
            )
        write_text_atomic(staging / "labels.jsonl", "".join(x + "\n" for x in lines))
        write_text_atomic(
            staging / "review" / "queue.jsonl",
            "".join(
                json.dumps({"uid": u, "source": pool_by[u].source, "reason": why, "label": lab.to_json()})
                + "\n"
                for u, lab, why in queue
            ),
        )
        write_text_atomic(
            staging / "review" / "candidates.jsonl",
            "".join(
                json.dumps(
                    {
                        "uid": u,
                        "source": pool_by[u].source,
                        "exported": u in chosen_set,
                        "labels": [lab.to_json() for lab in labs],
                    }
                )
                + "\n"
                for u, labs in labelled.items()
            ),
        )
        write_text_atomic(staging / "spec.yaml", spec.to_yaml())
        licenses = Counter(pool_by[u].license for u in chosen)
        provenance = {
            "pools": cfg.pools,
            "licenses": dict(licenses),
            "expand": str(cfg.expand) if cfg.expand else None,
            "labellers": sorted({lab.model for u in chosen for lab in labelled[u]}),
            "verifiers": sorted({str(lab.verifier) for u in chosen for lab in labelled[u]}),
        }
        write_text_atomic(staging / "README.md", dataset_card(spec, counts, metrics, provenance, exported))
        timings["select+export"] = time.perf_counter() - t0
        n_pool = max(1, tools_info["pool"]["read"])
        ex = log.get("export")
        ex.saw, ex.kept, ex.runs = len(items), counts["images"], 1
        ex.seconds = time.perf_counter() - t_export
        summary = {
            "spec": spec.model_dump(mode="json"),
            "formats": exported,
            "counts": counts,
            "metrics": metrics,
            "short_classes": short,
            "rounds": rounds,
            "pool": tools_info["pool"],
            "tools": tools_info["steps"],
            "copies_of_expanded_removed": len(tools_info["copies_of_expanded"]),
            "queued_for_review": len(queue),
            "resumed": {"pool": resumed_pool, "labels": resumed_labels},
            "stages": log.summary(),
            "model_calls": log.totals(),
            "models": log.models,
            "provenance": provenance,
            "seconds": {k: round(v, 3) for k, v in timings.items()},
            "seconds_per_1000_pool_images": {k: round(v / n_pool * 1000, 3) for k, v in timings.items()},
            "total_seconds": round(time.perf_counter() - t_start, 3),
        }
        write_json_atomic(staging / "build.json", summary)
        images = load_removed_thumbs(work / "removed.parquet")
        images.update({u: pool_by[u].data for u in held})
        write_build_report(
            staging / "report",
            title=f"vlcurate build: {', '.join(spec.class_names)}",
            inputs=cfg.pools,
            log=log,
            rows=tools_info["pool"]["read"],
            kept=len(chosen),
            counts={"per_class": counts["per_class"], "per_split": counts["per_split"]},
            notes=[
                alr_note(metrics["alr"]),
                f"CBI {metrics['balance']['cbi']}, min/max ratio {metrics['balance']['min_max_ratio']}",
                f"{len(queue)} labels queued for review in review/queue.jsonl",
                "models: " + "; ".join(f"{k} {v}" for k, v in log.models.items()),
                f"model calls: {', '.join(f'{k} {v:,}' for k, v in sorted(log.totals().items())) or 'none'}",
            ],
            tool_steps=tools_info["steps"],
            images=images,
            doubtful=list(held.items()),
            classes=spec.class_names,
            target=spec.images_per_class,
            alr_per_class=metrics["alr_per_class"],
            reliability_bar=spec.min_reliability,
            extra={"metrics": metrics},
        )
        commit(staging, out, cfg.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(work, ignore_errors=True)
    progress(
        "export", f"{counts['images']} images, {counts['annotations']} labels -> {out} ({', '.join(formats)})"
    )
    return summary


__all__ = ["BuildConfig", "SpecError", "build", "make_spec", "plan", "work_dir_for"]
