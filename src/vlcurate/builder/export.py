"""Export: the built dataset in each requested format, each re-imported and counted, plus a card.

Everything is written into a staging folder beside `--out` and renamed into place at the end
(`io.staged_dir`), so a failed or killed export never leaves a folder that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vlcurate.builder.formats import Dataset, FormatError, read_dataset, write_dataset
from vlcurate.builder.spec import DatasetSpec

DEFAULT_FORMATS = {
    "classify": ("imagefolder",),
    "detect": ("coco", "yolo", "voc"),
    "segment": ("coco", "yolo"),
}
SUPPORTED = {
    "classify": ("imagefolder", "hf"),
    "detect": ("coco", "yolo", "voc", "hf"),
    "segment": ("coco", "yolo", "voc", "hf"),
}


class ExportError(RuntimeError):
    """A written export did not read back as it was written."""


def check_formats(task: str, formats: list[str]) -> None:
    bad = [f for f in formats if f not in SUPPORTED[task]]
    if bad:
        raise ValueError(
            f"format(s) {', '.join(bad)} cannot hold a {task} dataset; use {', '.join(SUPPORTED[task])}"
        )


def export_all(ds: Dataset, formats: list[str], staging: Path) -> dict[str, Any]:
    """Write each format under staging/FORMAT, read it back and compare the counts."""
    expected = ds.counts()
    out: dict[str, Any] = {}
    for fmt in formats:
        write_dataset(ds, fmt, staging / fmt)
        try:
            back = read_dataset(staging / fmt, fmt).counts()
        except FormatError as exc:
            raise ExportError(f"{fmt} export does not read back: {exc}") from None
        want = dict(expected)
        if fmt in ("yolo", "voc", "imagefolder"):
            want["masks"] = back["masks"]  # YOLO keeps polygons, VOC and ImageFolder no masks
        for key in ("images", "annotations", "per_split", "per_class"):
            if back[key] != want[key]:
                raise ExportError(f"{fmt} export reads back {key} {back[key]} instead of {want[key]}")
        out[fmt] = {"path": fmt, "reimported": back}
    return out


def dataset_card(
    spec: DatasetSpec,
    counts: dict[str, Any],
    metrics: dict[str, Any],
    provenance: dict[str, Any],
    formats: dict[str, Any],
) -> str:
    """A Markdown dataset card: what was asked, what is in it, how good it is, where it came from."""
    alr = metrics.get("alr", {})
    bal = metrics.get("balance", {})
    lines = [
        f"# Dataset card: {', '.join(spec.class_names)} ({spec.task})",
        "",
        f"Built by `vlcurate build` from the request: {spec.request!r}."
        if spec.request
        else "Built by `vlcurate build`.",
        "",
        "## Contents",
        "",
        f"- images: {counts['images']}, annotations: {counts['annotations']}, masks: {counts['masks']}",
        f"- splits: {json.dumps(counts['per_split'])}",
        "",
        "| class | annotations | definition |",
        "|---|---|---|",
        *[f"| {c.name} | {counts['per_class'].get(c.name, 0)} | {c.definition} |" for c in spec.classes],
        "",
        "## Quality",
        "",
        _alr_line(alr),
        f"- Class Balance Index (1 - H/log K, 0 = balanced): {bal.get('cbi')}; "
        f"min/max class ratio {bal.get('min_max_ratio')}",
        f"- label issues flagged: {metrics.get('label_issues')}",
        f"- labels queued for review (not exported): {metrics.get('queued')}",
        *(
            [
                f"- labels the crowd corrected (its verified class taken; the model's kept as "
                f"`corrected_from` in `labels.jsonl`): {metrics['platform']['adopted']}"
            ]
            if (metrics.get("platform") or {}).get("adopted")
            else []
        ),
        f"- SSIM of enhanced images to their originals: {json.dumps(metrics.get('ssim_to_original'))}",
        f"- duplicates removed: {json.dumps(metrics.get('removed'))}",
        "",
        "## Provenance and licences",
        "",
        f"- pools: {', '.join(provenance.get('pools', []))}",
        f"- licences: {json.dumps(provenance.get('licenses', {}))}",
        f"- labelled by: {', '.join(provenance.get('labellers', []))}; "
        f"checked by: {', '.join(provenance.get('verifiers', []))}",
        f"- expanded dataset: {provenance.get('expand') or 'none'}",
        "- per-image source, licence, labels, confidences and models: `labels.jsonl`",
        "",
        "## Formats",
        "",
        *[
            f"- `{fmt}/`: re-imported with {v['reimported']['images']} images and "
            f"{v['reimported']['annotations']} annotations"
            for fmt, v in formats.items()
        ],
        "",
        "## Spec",
        "",
        "```yaml",
        spec.to_yaml().rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _alr_line(alr: dict[str, Any]) -> str:
    """The card's ALR line: corrected for the verifier's measured error, or the raw confirmed share."""
    if alr.get("source") == "platform":
        return (
            f"- Annotation Label Reliability (share of labels the crowd's verified labels agree with, "
            f"platform quorum with hidden checks): {alr.get('alr')} (95% Wilson interval {alr.get('ci95')}, "
            f"{alr.get('checked')} labels verified by the crowd)"
        )
    if alr.get("calibrated"):
        cal, raw = alr["calibration"], alr["raw"]
        return (
            f"- Annotation Label Reliability (estimated share of correct labels): {alr['alr']:.4f} "
            f"(95% interval {alr['ci95']}); the check confirmed {raw['alr']:.4f} of "
            f"{alr['checked']} labels, corrected for its error measured on {cal['images']} trusted "
            f"images of {cal['source']} (confirms {cal['sensitivity']} of correct labels and "
            f"{cal['false_confirm_rate']} of wrong ones)"
        )
    why = f"; uncalibrated: {alr['why_not']}" if alr.get("why_not") else ""
    return (
        f"- Annotation Label Reliability (share of labels an independent check confirmed): {alr.get('alr')} "
        f"(95% Wilson interval {alr.get('ci95')}, {alr.get('checked')} labels checked{why})"
    )
