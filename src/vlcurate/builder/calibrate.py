"""ALR corrected for the verifier's own measured error, on labels the operator trusts.

The second check is not a perfect judge: measured on the synthetic world, the crop check confirms
about 97% of correct labels but also about a third of wrong ones (its errors follow the labeller's,
since the same model looks twice), so the share it confirms runs a few points under the labels'
true accuracy. If the verifier confirms a correct label with probability s (its sensitivity) and a
wrong one with probability f, the confirmed share is c = a*s + (1-a)*f, so a = (c - f) / (s - f)
(Rogan and Gladen, 1978). s and f are measured by labelling and checking a trusted sample exactly as
the pool is labelled and checked: an existing dataset's labels (`--expand`, or `--calibrate`),
never the synthetic truth. The interval takes the uncertainty of all three rates (a parametric
bootstrap over their Jeffreys posteriors), so a small trusted sample gives a wide interval.
Without a trusted sample ALR stays the raw confirmed share and says it is uncalibrated.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.builder.costs import StageLog
from vlcurate.builder.formats import Ann, Dataset, write_json_atomic
from vlcurate.builder.label import Label, box_masks
from vlcurate.builder.spec import DatasetSpec
from vlcurate.builder.supervise import Verifier

DRAWS = 20_000
MAX_TRUSTED = 400  # trusted images labelled and checked for the calibration


@dataclass(frozen=True)
class Calibration:
    """How the verifier did on trusted labels: confirmations of correct and of wrong labels."""

    source: str
    images: int
    correct: int
    correct_confirmed: int
    wrong: int
    wrong_confirmed: int

    @property
    def sensitivity(self) -> float | None:
        return self.correct_confirmed / self.correct if self.correct else None

    @property
    def false_confirm(self) -> float | None:
        return self.wrong_confirmed / self.wrong if self.wrong else None

    def to_dict(self) -> dict[str, Any]:
        s, f = self.sensitivity, self.false_confirm
        return {
            "source": self.source,
            "images": self.images,
            "labels_correct": self.correct,
            "labels_wrong": self.wrong,
            "sensitivity": None if s is None else round(s, 4),
            "false_confirm_rate": None if f is None else round(f, 4),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        return cls(
            d["source"],
            d["images"],
            d["labels_correct"],
            d["correct_confirmed"],
            d["labels_wrong"],
            d["wrong_confirmed"],
        )

    def saved(self) -> dict[str, Any]:
        return self.to_dict() | {
            "correct_confirmed": self.correct_confirmed,
            "wrong_confirmed": self.wrong_confirmed,
        }


def _iou(a: Sequence[int], b: Sequence[int]) -> float:
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def label_correct(lab: Label, truth: Sequence[Ann]) -> bool:
    """A whole-image label is correct when the image holds that class; a box when it overlaps a
    trusted box of that class at IoU >= 0.5."""
    if lab.box is None:
        return any(a.cls == lab.cls for a in truth)
    return any(a.cls == lab.cls and a.box is not None and _iou(lab.box, a.box) >= 0.5 for a in truth)


def trusted_sample(ds: Dataset, classes: list[str], task: str, limit: int = MAX_TRUSTED) -> list[int]:
    """Items usable as a trusted sample: every annotation in the spec's classes (one for classify),
    taken evenly across the dataset up to `limit`."""
    ok = [
        i
        for i, it in enumerate(ds.items)
        if it.anns
        and all(a.cls in classes for a in it.anns)
        and (task != "classify" or len({a.cls for a in it.anns}) == 1)
        and (task == "classify" or all(a.box is not None for a in it.anns))
    ]
    if len(ok) <= limit:
        return ok
    step = len(ok) / limit
    return [ok[int(k * step)] for k in range(limit)]


def measure(source: str, truths: Sequence[Sequence[Ann]], labels: Sequence[Sequence[Label]]) -> Calibration:
    """Count the verifier's confirmations of correct and of wrong labels on trusted images."""
    c = cc = w = wc = 0
    for truth, labs in zip(truths, labels, strict=True):
        for lab in labs:
            if lab.verified is None:
                continue
            if label_correct(lab, truth):
                c += 1
                cc += int(lab.verified)
            else:
                w += 1
                wc += int(lab.verified)
    return Calibration(source, len(truths), c, cc, w, wc)


def corrected_alr(confirmed: int, checked: int, cal: Calibration, seed: int = 0) -> dict[str, Any]:
    """Accuracy estimated from the confirmed share and the verifier's measured s and f, with a 95%
    interval from bootstrap draws of all three rates (clipped to [0, 1])."""
    out: dict[str, Any] = {"calibration": cal.to_dict()}
    if not checked or not cal.correct or not cal.wrong:
        out["alr"] = None
        out["why_not"] = (
            "no labels checked"
            if not checked
            else "the trusted sample has no correct label"
            if not cal.correct
            else "the labeller made no mistake on the trusted sample, so the verifier's false "
            "confirmations cannot be measured; ALR is the raw confirmed share"
        )
        return out
    c = confirmed / checked
    s, f = cal.sensitivity, cal.false_confirm
    assert s is not None and f is not None
    rng = np.random.default_rng(seed)
    cs = rng.beta(confirmed + 0.5, checked - confirmed + 0.5, DRAWS)
    ss = rng.beta(cal.correct_confirmed + 0.5, cal.correct - cal.correct_confirmed + 0.5, DRAWS)
    fs = rng.beta(cal.wrong_confirmed + 0.5, cal.wrong - cal.wrong_confirmed + 0.5, DRAWS)
    gap = ss - fs
    with np.errstate(divide="ignore", invalid="ignore"):
        draws = np.where(gap > 0, (cs - fs) / gap, np.nan)
    draws = np.clip(draws[np.isfinite(draws)], 0.0, 1.0)
    if s - f <= 0 or not len(draws):
        out["alr"] = None
        out["why_not"] = "the verifier confirms wrong labels as often as correct ones: it tells nothing"
        return out
    point = float(np.clip((c - f) / (s - f), 0.0, 1.0))
    lo, hi = np.quantile(draws, [0.025, 0.975])
    out.update(alr=point, ci95=[round(float(lo), 4), round(float(hi), 4)])
    return out


def calibrate_on(
    trusted: tuple[str, Dataset] | None,
    spec: DatasetSpec,
    labeller: Any,
    verifier: Verifier,
    work: Path,
    progress: Callable[[str, str], None],
    log: StageLog,
) -> Calibration | None:
    """Label and check a trusted sample exactly as the pool is, to measure the verifier's error."""
    if trusted is None:
        return None
    saved = work / "calibration.json"
    if saved.is_file() and "calibrate" in log.stages:
        log.mark_resumed("calibrate")
        return Calibration.from_dict(json.loads(saved.read_text()))
    log.reset("calibrate")
    source, ds = trusted
    picked = trusted_sample(ds, spec.class_names, spec.task)
    if not picked:
        progress("calibrate", f"{source}: no image whose labels are all in the spec's classes")
        return None
    with log.stage("calibrate") as st:
        datas = [ds.items[i].read() for i in picked]
        labs = labeller.label(datas)
        if spec.task == "segment":
            box_masks(datas, labs)
        verifier.verify(datas, labs)
        if getattr(verifier, "model", "").startswith("vlm:"):
            log.count(vlm_requests=sum(len(x) for x in labs))
        cal = measure(source, [ds.items[i].anns for i in picked], labs)
        st.saw = st.kept = len(picked)
    progress(
        "calibrate",
        f"verifier on {cal.images} trusted images: confirms {cal.correct_confirmed}/{cal.correct} "
        f"correct and {cal.wrong_confirmed}/{cal.wrong} wrong labels",
    )
    write_json_atomic(saved, cal.saved())
    log.save(work / "costs.json")
    return cal


def reported_alr(raw: dict[str, Any], cal: Calibration | None, has_trusted: bool) -> dict[str, Any]:
    """The ALR to report: corrected for the verifier's measured error when a trusted sample allows."""
    if cal is None:
        why = (
            "the trusted dataset has no image in the spec's classes"
            if has_trusted
            else "no trusted labels to measure the verifier on (pass --expand or --calibrate)"
        )
        return raw | {"calibrated": False, "why_not": why}
    fixed = corrected_alr(raw["confirmed"], raw["checked"], cal)
    if fixed["alr"] is None:
        return raw | {"calibrated": False, "why_not": fixed["why_not"], "calibration": fixed["calibration"]}
    return {
        "alr": fixed["alr"],
        "ci95": fixed["ci95"],
        "checked": raw["checked"],
        "confirmed": raw["confirmed"],
        "calibrated": True,
        "raw": {"alr": raw["alr"], "ci95": raw["ci95"]},
        "calibration": fixed["calibration"],
    }
