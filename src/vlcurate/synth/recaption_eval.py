"""Measure recaptioning on a synthetic pool, where every scene's truth is known.

For each pair: is the chosen caption true of the scene (`parse_caption` + `caption_is_true`)?
Reported separately for corrupted originals (how many got fixed, by corruption kind) and for
correct originals (how many were made false: the promise is none).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vlcurate.synth.caption import caption_is_true
from vlcurate.synth.parse import parse_caption
from vlcurate.synth.scene import scene_from_seed


def is_true(text: str | None, layout: Any) -> bool:
    cap = parse_caption(text or "")
    return cap is not None and caption_is_true(layout, cap)


def evaluate_pool(pool_dir: str | Path, run_dir: str | Path, seed: int) -> dict[str, Any]:
    """Fix rate on corrupted captions and harm rate on correct ones; `seed` is the pool's seed."""
    truth = pq.read_table(Path(pool_dir) / "truth.parquet").to_pylist()
    tables = sorted((Path(run_dir) / "captions").glob("*.parquet"))
    if not tables:
        raise ValueError(f"no recaption tables under {run_dir}/captions")
    rows = {r["uid"]: r for r in pa.concat_tables([pq.read_table(p) for p in tables]).to_pylist()}
    fixed: Counter[str] = Counter()
    total: Counter[str] = Counter()
    made_false: list[dict[str, Any]] = []
    correct = correct_replaced = missing = 0
    for index, t in enumerate(truth):
        r = rows.get(t["uid"])
        if r is None:
            missing += 1
            continue
        layout = scene_from_seed(seed, index).layout
        ok = is_true(r["chosen"], layout)
        if t["corrupted"]:
            total[t["corruption"]] += 1
            fixed[t["corruption"]] += int(ok)
        else:
            correct += 1
            correct_replaced += int(r["chosen_origin"] != "original")
            if not ok:
                made_false.append({"uid": t["uid"], "original": t["caption"], "chosen": r["chosen"]})
    n_bad = sum(total.values())
    by_kind: dict[str, dict[str, float | int]] = defaultdict(dict)
    for kind in sorted(total):
        by_kind[kind] = {"n": total[kind], "fixed": fixed[kind], "share": round(fixed[kind] / total[kind], 4)}
    return {
        "pairs": len(truth),
        "missing_rows": missing,
        "corrupted": n_bad,
        "corrupted_fixed": sum(fixed.values()),
        "corrupted_fixed_share": round(sum(fixed.values()) / n_bad, 4) if n_bad else None,
        "fixed_by_kind": dict(by_kind),
        "correct": correct,
        "correct_replaced": correct_replaced,
        "correct_made_false": len(made_false),
        "correct_made_false_share": round(len(made_false) / correct, 4) if correct else None,
        "made_false_examples": made_false[:5],
    }
