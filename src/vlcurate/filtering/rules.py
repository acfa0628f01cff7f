"""DataComp's basic caption and image-size rules, vectorised per batch.

Each rule yields a mask of failing rows and a reason label. The order of the checks is fixed, so the
first failing reason of a row is well defined: status, invalid_score, score, text rules
(missing:text, words, chars), size rules (missing:size, min_side, aspect).
Words are counted as DataComp does (`len(text.split())`, Python's whitespace split), characters as
Unicode code points (`len(text)`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from vlcurate.filtering.config import RuleSettings
from vlcurate.filtering.inputs import RawBatch


@dataclass
class Check:
    """One failing-row mask with its reason label (a constant, or per row for `status:`)."""

    label: str
    fails: np.ndarray


@dataclass
class RuleOutcome:
    """The score-independent verdict on one batch."""

    valid: np.ndarray  # status ok and a finite score in [-1, 1]
    status_fail: np.ndarray
    status_values: pa.Array | None
    invalid_score: np.ndarray
    rule_checks: list[Check] = field(default_factory=list)

    @property
    def rules_pass(self) -> np.ndarray:
        ok = np.ones(len(self.valid), dtype=bool)
        for c in self.rule_checks:
            ok &= ~c.fails
        return ok


def _fmt(x: float) -> str:
    return f"{x:g}"


def word_counts(text: pa.Array) -> np.ndarray:
    """Words per caption as DataComp counts them; -1 for a null caption."""
    return np.fromiter(
        (len(t.split()) if t is not None else -1 for t in text.to_pylist()), dtype=np.int64, count=len(text)
    )


def evaluate_rules(batch: RawBatch, rules: RuleSettings) -> RuleOutcome:
    """Status, score validity and the caption/size rules of one batch (the score cut comes later)."""
    n = len(batch)
    if batch.status is not None:
        status_fail = ~np.asarray(
            pc.fill_null(pc.equal(batch.status, "ok"), False).to_numpy(zero_copy_only=False)
        )
        status_values = pc.fill_null(batch.status, "null")
    else:
        status_fail = np.zeros(n, dtype=bool)
        status_values = None
    s = batch.score
    with np.errstate(invalid="ignore"):
        in_range = (s >= -1.0) & (s <= 1.0)  # False for NaN
    invalid_score = ~status_fail & ~in_range
    valid = ~status_fail & in_range

    checks: list[Check] = []
    if rules.any_text:
        if batch.text is None:
            checks.append(Check("missing:text", np.ones(n, dtype=bool)))
        else:
            null_text = np.asarray(batch.text.is_null().to_numpy(zero_copy_only=False))
            checks.append(Check("missing:text", null_text))
            if rules.min_words is not None:
                words = word_counts(batch.text)
                checks.append(Check(f"words<{rules.min_words}", ~null_text & (words < rules.min_words)))
            if rules.min_chars is not None:
                chars = pc.fill_null(pc.utf8_length(batch.text), 0).to_numpy(zero_copy_only=False)
                checks.append(Check(f"chars<{rules.min_chars}", ~null_text & (chars < rules.min_chars)))
    if rules.any_size:
        if batch.width is None or batch.height is None:
            missing = np.ones(n, dtype=bool)
            w = h = np.full(n, np.nan)
        else:
            w, h = batch.width, batch.height
            missing = np.isnan(w) | np.isnan(h)
        drop_missing = rules.missing_size == "drop"
        checks.append(Check("missing:size", missing if drop_missing else np.zeros(n, dtype=bool)))
        short = np.fmin(w, h)
        long = np.fmax(w, h)
        if rules.min_side is not None:
            with np.errstate(invalid="ignore"):
                checks.append(Check(f"min_side<{rules.min_side}", ~missing & (short < rules.min_side)))
        if rules.max_aspect is not None:
            with np.errstate(divide="ignore", invalid="ignore"):
                aspect = long / short
                # 0/0 and x/0 fail too: `not (aspect <= R)`
                checks.append(
                    Check(f"aspect>{_fmt(rules.max_aspect)}", ~missing & ~(aspect <= rules.max_aspect))
                )
    return RuleOutcome(valid, status_fail, status_values, invalid_score, checks)


def score_label(threshold: float) -> str:
    """Reason label for a score below the cut, e.g. `score<0.2134`."""
    return f"score<{threshold:.4f}"


def reason_columns(
    outcome: RuleOutcome, score_fail: np.ndarray | None, score_lbl: str
) -> tuple[pa.Array, pa.Array]:
    """(first reason, list of all reasons) per row; the first is '' for kept rows."""
    n = len(outcome.valid)
    consts: list[Check] = [Check("invalid_score", outcome.invalid_score)]
    if score_fail is not None:
        consts.append(Check(score_lbl, score_fail))
    consts += outcome.rule_checks
    labels = [c.label for c in consts]

    # Column 0 is the status check (labels per row), then the constant checks in order.
    if outcome.status_values is not None:
        enc = pc.dictionary_encode(outcome.status_values)
        status_idx = np.asarray(enc.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        status_labels = [f"status:{v}" for v in enc.dictionary.to_pylist()]
    else:
        status_idx = np.zeros(n, dtype=np.int64)
        status_labels = []
    dictionary = [*labels, *status_labels, ""]
    matrix = np.empty((n, 1 + len(consts)), dtype=bool)
    matrix[:, 0] = outcome.status_fail
    label_idx = np.empty((n, 1 + len(consts)), dtype=np.int32)
    label_idx[:, 0] = len(labels) + status_idx
    for j, c in enumerate(consts):
        matrix[:, 1 + j] = c.fails
        label_idx[:, 1 + j] = j
    dict_arr = pa.array(dictionary, pa.string())
    rows, cols = np.nonzero(matrix)  # row-major: per row, checks in order
    values = label_idx[rows, cols]
    counts = matrix.sum(axis=1)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    all_reasons = pa.ListArray.from_arrays(
        pa.array(offsets),
        pa.DictionaryArray.from_arrays(pa.array(values, pa.int32()), dict_arr).cast(pa.string()),
    )
    first_col = np.where(counts > 0, np.argmax(matrix, axis=1), 0)
    first = np.where(counts > 0, label_idx[np.arange(n), first_col], len(dictionary) - 1).astype(np.int32)
    first_reason = pa.DictionaryArray.from_arrays(pa.array(first, pa.int32()), dict_arr).cast(pa.string())
    return first_reason, all_reasons
