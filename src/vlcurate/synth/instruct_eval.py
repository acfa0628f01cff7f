"""Precision and recall of instruction filters against planted faults (`synth_data` truth tables).

Each dropped sample is attributed to the step of its first reason (`reason` prefixes: the source's
`invalid:`/`image:`, `repetition:`, `refusal`, `language:`, `format:`, `answer_mismatch`, or any
other operator's reason as given), and each step is scored against the faults it is meant to catch:
precision = dropped by the step and carrying one of its faults / dropped by the step; recall = its
faults dropped by it / its faults planted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

# The faults each model-free filter is meant to catch.
TARGETS: dict[str, tuple[str, ...]] = {
    "instruct_repetition": ("repetition",),
    "teacher_behaviour": ("refusal", "wrong_language", "wrong_format"),
    "answer_agreement": ("wrong_answer",),
}
_REASON_STEP = (
    ("repetition:", "instruct_repetition"),
    ("refusal", "teacher_behaviour"),
    ("language:", "teacher_behaviour"),
    ("format:", "teacher_behaviour"),
    ("answer_mismatch", "answer_agreement"),
)


def step_of(reason: str) -> str:
    """Which step a reason belongs to (the reason itself when it is not one of the model-free filters')."""
    return next((step for prefix, step in _REASON_STEP if reason.startswith(prefix)), reason)


def precision_recall(
    decisions: Iterable[Mapping[str, Any]],
    truth: Mapping[str, str | None],
    targets: Mapping[str, tuple[str, ...]] = TARGETS,
    attribute: Callable[[str], str] = step_of,
) -> dict[str, dict[str, Any]]:
    """Per step: dropped, true positives, planted, precision, recall. `decisions` rows have uid, keep,
    reason; `truth` maps uid -> planted fault (None when clean); `attribute` names the step a reason
    belongs to (default: the model-free filters' steps)."""
    dropped_by: dict[str, list[str]] = {}
    for row in decisions:
        if not row["keep"]:
            dropped_by.setdefault(attribute(str(row["reason"])), []).append(str(row["uid"]))
    out: dict[str, dict[str, Any]] = {}
    for step, faults in targets.items():
        dropped = dropped_by.get(step, [])
        hits = sum(1 for u in dropped if truth.get(u) in faults)
        planted = sum(1 for f in truth.values() if f in faults)
        out[step] = {
            "faults": list(faults),
            "dropped": len(dropped),
            "true_positives": hits,
            "planted": planted,
            "precision": round(hits / len(dropped), 4) if dropped else None,
            "recall": round(hits / planted, 4) if planted else None,
        }
    return out
