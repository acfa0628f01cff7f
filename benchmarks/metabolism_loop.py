"""The Data Metabolism loop end to end on the synthetic world, against deliberately weakened models.

Why: the loop is only worth running if its diagnosis names what is actually wrong, its plan asks
for the data that fixes it, and the increment fixes it without breaking anything else. Three
models with one planted weakness each (`vlcurate vlm serve --weakness`):

* `blind-colour=red`: cannot see red objects;
* `confuse-shapes=circle:square`: swaps circles and squares;
* `refuse=count`: refuses every counting question.

For each: the synthetic benchmark (`vlcurate synth bench`, every category); a training pool of
synthetic instruction samples with the planted attribute left out (so the server's memory does not
cure it) plus a few samples about it with wrong answers planted (label noise for the diagnosis to
implicate); the server started with that pool as its memory; then one round of `vlcurate loop`
(`metabolism.loop.Loop` with the offline collector): evaluate -> diagnose (re-asking failures) ->
plan -> apply -> version -> train hook (the server reloads its memory with the new version's export)
-> re-evaluate -> validate (McNemar per category, no-regression rule).

Reported per case: the rank of the planted weakness in the diagnosis (goal: 1), whether the plan's
first collect action asks for the planted attribute, how many planted wrong labels the plan removes,
the planted slice's accuracy before and after with Wilson intervals ("closed" when the interval after
lies above the one before), per-category accuracy before/after with intervals, and the validation
decision (accepted, regressed categories).

Run: `.venv/bin/python benchmarks/metabolism_loop.py --json-out .bench/metabolism_loop.json`
(~5 minutes on 2 busy cores; `--quick` uses a 300-item benchmark, ~3 minutes).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE.parent), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from tests.vlm_live import VLMServer  # noqa: E402

from _common import bench_dir, emit, log, machine_info  # noqa: E402
from vlcurate.base.intervals import wilson  # noqa: E402
from vlcurate.cli.loop_cmd import synth_collector  # noqa: E402
from vlcurate.evals.results import SampleResult, load_run  # noqa: E402
from vlcurate.metabolism.diagnosis import Weakness, load_diagnosis  # noqa: E402
from vlcurate.metabolism.loop import Loop, LoopConfig  # noqa: E402
from vlcurate.metabolism.plan import load_plan  # noqa: E402
from vlcurate.synth.bench import make_benchmark, make_training_samples  # noqa: E402
from vlcurate.synth.vocab import COLOUR_NAMES, SHAPES  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "blind-colour=red": {"focus": {"colour": "red"}, "words": ["red"]},
    "confuse-shapes=circle:square": {"focus": {"shape": "circle"}, "words": ["circle", "square"]},
    "refuse=count": {"focus": {"category": "count"}, "words": []},
}
N_WRONG = 8


def planted(case: str, w: Weakness) -> bool:
    if case.startswith("refuse"):
        return w.category == "count" and not w.attribute
    values = {v for val in w.attribute.values() for v in val.split("|")}
    return bool(values & set(CASES[case]["words"])) and len(values - {"true", "false"}) <= 2


def about(case: str, r: SampleResult) -> bool:
    """Benchmark items the planted weakness concerns."""
    if case.startswith("refuse"):
        return r.category == "count"
    return any(str(v).lower() in CASES[case]["words"] for k, v in r.meta.items() if k in ("colour", "shape"))


def _wrong(answer: str, short: str) -> str:
    s = short.strip().lower()
    if s.isdigit():
        return str(int(s) + 1)
    if s in ("yes", "no"):
        return "no" if s == "yes" else "yes"
    for pool in (COLOUR_NAMES, SHAPES):
        if s in pool:
            return next(v for v in pool if v != s)
    if len(s) == 1 and s.isalpha():
        return "A" if s.upper() != "A" else "B"
    return answer + " not"


def training_pool(out: Path, case: str, n: int) -> tuple[Path, set[str]]:
    """General samples without the planted attribute, plus N_WRONG about it with wrong answers."""
    general = make_training_samples(out / "general", n, seed=5)
    about_it = make_training_samples(out / "about", N_WRONG, seed=6, focus=CASES[case]["focus"])
    words = CASES[case]["words"]
    keep: list[dict[str, Any]] = []
    for d in json.loads(general.read_text()):
        text = json.dumps(d["conversations"]).lower()
        if case.startswith("refuse") and d.get("category") == "count":
            continue
        if any(w in text for w in words):
            continue
        d["image"] = str((general.parent / d["image"]).resolve())
        keep.append(d)
    wrong: set[str] = set()
    for d in json.loads(about_it.read_text()):
        d["id"] = "wrong-" + d["id"]
        d["image"] = str((about_it.parent / d["image"]).resolve())
        d["conversations"][1]["value"] = _wrong(d["conversations"][1]["value"], str(d["short_answer"]))
        wrong.add(d["id"])
        keep.append(d)
    path = out / "pool" / "data.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(keep))
    return path, wrong


def _acc(rows: list[SampleResult]) -> dict[str, Any]:
    scored = [r for r in rows if r.correct is not None]
    k = sum(1 for r in scored if r.correct)
    lo, hi = wilson(k, len(scored))
    return {
        "n": len(scored),
        "accuracy": round(k / len(scored), 4) if scored else None,
        "ci95": [round(lo, 4), round(hi, 4)],
    }


def run_case(case: str, bench: Path, work: Path, n_train: int, per_weakness: int) -> dict[str, Any]:
    pool, wrong = training_pool(work / "train", case, n_train)
    t0 = time.perf_counter()
    with VLMServer(["--weakness", case, "--memory", str(pool)], log=work / "server.log") as vlm:
        cfg = LoopConfig(
            bench=str(bench),
            endpoint=vlm.base_url,
            store=work / "store",
            out=work / "loop",
            train=str(pool),
            rounds=1,
            per_weakness=per_weakness,
            top=3,
            progress=False,
        )
        summary = Loop(cfg, synth_collector).run()
    seconds = time.perf_counter() - t0
    rec = summary.rounds[0]
    diag = load_diagnosis(work / "loop" / "round-1" / "diag")
    rank = next((i for i, w in enumerate(diag.weaknesses, 1) if planted(case, w)), None)
    plan = load_plan(work / "loop" / "round-1" / "plan")
    first = plan.collect[0] if plan.collect else None
    removed = {s for r in plan.remove for s in r.sample_ids}
    before = [r for r in load_run(rec.base_run or "").samples if about(case, r)]
    after = [r for r in load_run(rec.new_run or "").samples if about(case, r)] if rec.new_run else []
    b, a = _acc(before), _acc(after)
    decision = rec.decision or {}
    cats = decision.get("categories", {})
    return {
        "case": case,
        "planted_rank": rank,
        "top_weakness": diag.weaknesses[0].label if diag.weaknesses else None,
        "top5": [f"{w.id} {w.kind} {w.label} ({w.score:.1f})" for w in diag.weaknesses[:5]],
        "attribution": diag.attribution,
        "plan_asks_for_it": bool(first and planted(case, diag.weakness(first.evidence.weakness))),
        "first_collect": {
            "focus": first.focus,
            "category": first.category,
            "n": first.n,
            "request": first.build_request,
        }
        if first
        else None,
        "planted_wrong_labels": len(wrong),
        "planted_wrong_removed": len(wrong & removed),
        "other_removed": len(removed - wrong),
        "added": rec.added,
        "planted_slice": {
            "before": b,
            "after": a,
            "closed": bool(a["n"] and b["n"] and a["ci95"][0] > b["ci95"][1]),
        },
        "categories": {
            c: {
                "before": rec.accuracy_before.get(c),
                "after": rec.accuracy_after.get(c),
                "delta": v.get("delta"),
                "p_value": v.get("p_value"),
                "regressed": v.get("regressed"),
            }
            for c, v in cats.items()
        },
        "accepted": decision.get("accepted"),
        "reasons": decision.get("reasons"),
        "status": rec.status,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 300-item benchmark")
    ap.add_argument("--items", type=int, default=None)
    ap.add_argument("--train", type=int, default=400, help="general training samples in the pool")
    ap.add_argument("--per-weakness", type=int, default=120)
    ap.add_argument("--cases", default=",".join(CASES))
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    items = args.items or (300 if args.quick else 600)
    root = bench_dir() / "metabolism_loop"
    shutil.rmtree(root, ignore_errors=True)
    bench = make_benchmark(root / "bench", items, seed=0)
    results = []
    for case in args.cases.split(","):
        log(f"{case}: loop round on {items} items")
        results.append(
            run_case(
                case, bench, root / case.replace("=", "_").replace(":", "_"), args.train, args.per_weakness
            )
        )
        log(f"{case}: rank {results[-1]['planted_rank']}, accepted {results[-1]['accepted']}")
    result = {
        "benchmark": "metabolism_loop",
        "items": items,
        "machine": machine_info(),
        "cases": results,
        "all_ranked_first": all(r["planted_rank"] == 1 for r in results),
        "all_closed": all(r["planted_slice"]["closed"] for r in results),
        "no_regression": all(not any(c["regressed"] for c in r["categories"].values()) for r in results),
    }
    line = "; ".join(
        f"{r['case']}: rank {r['planted_rank']}, slice {r['planted_slice']['before']['accuracy']} -> "
        f"{r['planted_slice']['after']['accuracy']}, accepted {r['accepted']}"
        for r in results
    )
    emit(result, f"metabolism_loop: {line}", args.json_out)


if __name__ == "__main__":
    main()
