"""Supervision: a second, independent check of every label and the quality figures.

- The check: the crop (or, for a whole-image label, the main region) seen at another scale and
  classified again by a second pass (`CropVerifier`), or asked of a VLM (`VlmVerifier`).
- Annotation Label Reliability (ALR): the share of labels the check confirms, with a Wilson interval.
- Class Balance Index (CBI): 1 - H(p) / log K over class counts (0 = balanced), with min/max ratio.
- Label issues: cleanlab's confident learning on the verifier's class probabilities when cleanlab
  is installed, else the same rule written out (`confident_learning_issues`).
Labels that fail the check, fall under the spec's confidence floor or are flagged as issues are
queued for review, never exported.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np

from vlcurate.base.intervals import wilson
from vlcurate.builder.label import Label, ZeroShot, crop_canvas, open_rgb
from vlcurate.builder.regions import propose_regions


class Verifier(Protocol):
    model: str

    def verify(self, datas: list[bytes], labels: list[list[Label]]) -> None: ...


def _other_side(box_side: float, size: int) -> float:
    """The second view's scale: small objects are enlarged, large ones shrunk (another look, same model)."""
    return 0.25 * size if box_side >= 0.3 * size else 0.4 * size


class CropVerifier:
    """Re-classify each label's region at another scale; confirmed when the class agrees."""

    def __init__(self, zero_shot: ZeroShot, classes: list[str]) -> None:
        self.zs, self.classes = zero_shot, classes
        self.model = f"crop-check:{zero_shot.model}"

    def verify(self, datas: list[bytes], labels: list[list[Label]]) -> None:
        views: list[np.ndarray] = []
        owners: list[Label] = []
        for d, labs in zip(datas, labels, strict=True):
            if not labs:
                continue
            try:
                a = np.asarray(open_rgb(d), dtype=np.uint8)
            except Exception:
                continue
            for lab in labs:
                box = lab.box
                if box is None:  # a whole-image label: check its main region, else the centre
                    regions = propose_regions(a)
                    h, w = a.shape[:2]
                    box = regions[0][0] if regions else (w // 10, h // 10, w - w // 10, h - h // 10)
                side = max(box[2] - box[0], box[3] - box[1]) * self.zs.size / max(a.shape[:2])
                views.append(crop_canvas(a, box, self.zs.size, side=_other_side(side, self.zs.size)))
                owners.append(lab)
        probs, other = self.zs.probs_open(views)
        for lab, p, o in zip(owners, probs, other, strict=True):
            j = self.classes.index(lab.cls)
            lab.verified = bool(int(p.argmax()) == j and not o)
            lab.verifier = self.model
            lab.verifier_confidence = float(p[j])
            lab.probs = p.tolist()


class VlmVerifier:
    """Ask a VLM (`vlm.client`) whether each crop shows its class, with structured output."""

    SCHEMA: ClassVar[dict[str, Any]] = {
        "type": "object",
        "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}, "confidence": {"type": "number"}},
        "required": ["answer"],
    }

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.model = f"vlm:{settings.model}"

    def verify(self, datas: list[bytes], labels: list[list[Label]]) -> None:
        import io

        from vlcurate.vlm.client import VLMRequest, run_many

        reqs, owners = [], []
        for d, labs in zip(datas, labels, strict=True):
            for lab in labs:
                img = open_rgb(d)
                if lab.box is not None:
                    img = img.crop(lab.box)
                buf = io.BytesIO()
                img.save(buf, format="PNG")
                reqs.append(
                    VLMRequest(
                        prompt=f"Does this image show a {lab.cls}? Answer yes or no.",
                        images=[buf.getvalue()],
                        json_schema=self.SCHEMA,
                        max_tokens=32,
                    )
                )
                owners.append(lab)
        for lab, res in zip(owners, run_many(self.settings, reqs), strict=True):
            parsed = res.parsed[0] if res.ok and res.parsed else None
            lab.verifier = self.model
            lab.verified = bool(parsed and parsed.get("answer") == "yes")
            if parsed and isinstance(parsed.get("confidence"), (int, float)):
                lab.verifier_confidence = float(parsed["confidence"])


def reliability(labels: Sequence[Label]) -> dict[str, Any]:
    """ALR: share of checked labels the verifier confirmed, with its Wilson interval."""
    checked = [lab for lab in labels if lab.verified is not None]
    k = sum(1 for lab in checked if lab.verified)
    lo, hi = wilson(k, len(checked))
    return {
        "alr": k / len(checked) if checked else None,
        "ci95": [round(lo, 4), round(hi, 4)],
        "checked": len(checked),
        "confirmed": k,
    }


def class_balance(counts: dict[str, int]) -> dict[str, Any]:
    """CBI = 1 - H(p)/log K (0: perfectly balanced), and the min/max class count ratio."""
    values = np.array([counts[c] for c in counts], dtype=np.float64)
    k = len(values)
    total = values.sum()
    if k < 2 or total == 0:
        return {"cbi": 0.0, "min_max_ratio": 1.0 if total else 0.0, "counts": dict(counts)}
    p = values[values > 0] / total
    h = float(-(p * np.log(p)).sum())
    return {
        "cbi": round(max(0.0, 1.0 - h / math.log(k)), 6),  # no -0.0 for a perfect balance
        "min_max_ratio": round(float(values.min() / values.max()), 6),
        "counts": dict(counts),
    }


def confident_learning_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confident learning (Northcutt et al. 2021), 'prune by noise rate' reduced to its core rule.

    Per class j, the threshold t_j is the mean predicted probability of j over samples labelled j;
    a sample is an issue when some other class k reaches its own threshold (p_k >= t_k) and beats
    the given label's probability. Returns a boolean mask."""
    n, k = probs.shape
    thresholds = np.array(
        [probs[labels == j, j].mean() if (labels == j).any() else 1.0 for j in range(k)], dtype=np.float64
    )
    above = probs >= thresholds[None, :]
    above[np.arange(n), labels] = False
    beats = probs > probs[np.arange(n), labels][:, None]
    return np.asarray((above & beats).any(axis=1))


def label_issues(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, str]:
    """(issue mask, method): cleanlab's find_label_issues when it is installed and applicable."""
    if len(labels) == 0:
        return np.zeros(0, dtype=bool), "none"
    try:
        from cleanlab.filter import find_label_issues

        if len(np.unique(labels)) == probs.shape[1] and len(labels) >= 2 * probs.shape[1]:
            mask = find_label_issues(labels=labels, pred_probs=probs, filter_by="prune_by_noise_rate")
            return np.asarray(mask, dtype=bool), "cleanlab"
    except ImportError:
        pass
    return confident_learning_issues(labels, probs), "confident-learning"


@dataclass
class Decision:
    """What supervision decided: kept labels per image, the review queue and the figures."""

    kept: list[list[Label]]
    queued: list[tuple[int, Label, str]]
    metrics: dict[str, Any]


def supervise(labels: list[list[Label]], classes: list[str], *, min_confidence: float = 0.0) -> Decision:
    """Keep each verified label, or queue it with the reason (unconfirmed, low confidence, issue)."""
    flat = [(i, lab) for i, labs in enumerate(labels) for lab in labs]
    with_probs = [(i, lab) for i, lab in flat if lab.probs is not None]
    issue = np.zeros(len(with_probs), dtype=bool)
    method = "none"
    if with_probs:
        y = np.array([classes.index(lab.cls) for _, lab in with_probs])
        p = np.array([lab.probs for _, lab in with_probs], dtype=np.float64)
        issue, method = label_issues(y, p)
    flagged = {id(lab) for (_, lab), bad in zip(with_probs, issue, strict=True) if bad}
    kept: list[list[Label]] = [[] for _ in labels]
    queued: list[tuple[int, Label, str]] = []
    for i, lab in flat:
        if lab.verified is False:
            queued.append((i, lab, "not confirmed by the verifier"))
        elif lab.confidence < min_confidence:
            queued.append((i, lab, f"confidence {lab.confidence:.2f} < {min_confidence:g}"))
        elif id(lab) in flagged:
            queued.append((i, lab, f"label issue ({method})"))
        else:
            kept[i].append(lab)
    all_labels = [lab for _, lab in flat]
    per_class = {c: reliability([lab for lab in all_labels if lab.cls == c]) for c in classes}
    metrics = {
        "labels": len(all_labels),
        "alr": reliability(all_labels),
        "alr_per_class": per_class,
        "label_issues": {"method": method, "flagged": int(issue.sum())},
        "queued": len(queued),
        "queued_by_reason": dict(
            Counter(
                r.split(" (")[0] if r.startswith("label issue") else r.split(" ")[0] for _, _, r in queued
            )
        ),
    }
    return Decision(kept, queued, metrics)


def ssim_stats(values: Sequence[float]) -> dict[str, Any]:
    v = np.array([x for x in values if x is not None], dtype=np.float64)
    if not len(v):
        return {"n": 0}
    return {
        "n": len(v),
        "mean": round(float(v.mean()), 4),
        "min": round(float(v.min()), 4),
        "p05": round(float(np.quantile(v, 0.05)), 4),
    }
