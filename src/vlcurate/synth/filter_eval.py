"""Judge a filter's drops against the synthetic world's truth: precision and recall of removal."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc


@dataclass(frozen=True)
class RemovalQuality:
    """How well dropping pairs matched dropping the corrupted ones."""

    total: int
    corrupted: int
    removed: int
    removed_corrupted: int
    precision: float  # share of removed pairs that were corrupted
    recall: float  # share of corrupted pairs that were removed
    recall_by_kind: dict[str, float]
    counts_by_kind: dict[str, int]


def removal_quality(truth: pa.Table, decisions: pa.Table) -> RemovalQuality:
    """Join filter decisions to the truth table on uid and count."""
    keep = dict(zip(decisions.column("uid").to_pylist(), decisions.column("keep").to_pylist(), strict=True))
    uids = truth.column("uid").to_pylist()
    corrupted = truth.column("corrupted").to_pylist()
    kinds = truth.column("corruption").to_pylist()
    missing = [u for u in uids if u not in keep]
    if missing:
        raise ValueError(f"{len(missing)} pairs of the pool have no filter decision, e.g. {missing[0]}")
    removed = [not keep[u] for u in uids]
    n_removed = sum(removed)
    n_corr = sum(corrupted)
    hit = sum(1 for r, c in zip(removed, corrupted, strict=True) if r and c)
    by_kind: dict[str, list[bool]] = {}
    for r, c, k in zip(removed, corrupted, kinds, strict=True):
        if c:
            by_kind.setdefault(str(k), []).append(r)
    return RemovalQuality(
        total=len(uids),
        corrupted=n_corr,
        removed=n_removed,
        removed_corrupted=hit,
        precision=hit / n_removed if n_removed else 0.0,
        recall=hit / n_corr if n_corr else 0.0,
        recall_by_kind={k: sum(v) / len(v) for k, v in sorted(by_kind.items())},
        counts_by_kind={k: len(v) for k, v in sorted(by_kind.items())},
    )


def lowest_scored(decisions: pa.Table, truth: pa.Table, n: int) -> list[dict[str, object]]:
    """The `n` removed pairs with the lowest scores, with their truth, for printing."""
    removed = decisions.filter(pc.invert(decisions.column("keep")))
    removed = removed.sort_by([("score", "ascending")]).slice(0, n)
    info = {r["uid"]: r for r in truth.select(["uid", "caption", "true_caption", "corruption"]).to_pylist()}
    return [
        {"score": r["score"], **{k: v for k, v in info.get(r["uid"], {}).items() if k != "uid"}}
        for r in removed.select(["uid", "score"]).to_pylist()
    ]
