"""Precision and recall of the model-free instruction filters on synthetic data with planted faults.

Why: the Data Metabolism filters (repetition, abnormal teacher behaviour, agreement with the short
answer) must drop what is wrong and keep what is right; on the synthetic world every fault is planted
on purpose and recorded, so both can be counted. `vlcurate synth instruct` writes N samples (half
with one fault), `vlcurate run`'s local engine runs instruct_repetition -> teacher_behaviour ->
answer_agreement over them, and each drop is attributed to the step of its first reason.

Run: `.venv/bin/python benchmarks/metabolism_text_filters.py --n 2000 --json-out .bench/text_filters.json`
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import emit, log
from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import load_recipe
from vlcurate.synth.instruct_data import write_planted
from vlcurate.synth.instruct_eval import precision_recall

RECIPE = """\
source: {{input: "{data}", kind: instruct, options: {{samples_per_shard: 1000}}}}
steps:
  - op: instruct_repetition
  - op: teacher_behaviour
  - op: answer_agreement
sink: {{out: "{out}"}}
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.5)
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, out = Path(tmp) / "data", Path(tmp) / "run"
        log(f"writing {args.n} synthetic samples")
        counts = write_planted(data, args.n, seed=args.seed, fault_rate=args.fault_rate)
        t0 = time.perf_counter()
        result = run_recipe(load_recipe("bench.yaml", text=RECIPE.format(data=data / "data.json", out=out)))
        seconds = time.perf_counter() - t0
        truth = {
            r["uid"]: r["fault"] for r in map(json.loads, (data / "truth.jsonl").read_text().splitlines())
        }
        decisions = [
            r for f in sorted((out / "decisions").glob("*.parquet")) for r in pq.read_table(f).to_pylist()
        ]
    scores = precision_recall(decisions, truth)
    kept = {r["uid"] for r in decisions if r["keep"]}
    untouched = {
        str(f): round(
            sum(u in kept for u, g in truth.items() if g == f) / max(1, counts.get(f or "clean", 0)), 4
        )
        for f in (None, "blind_answerable", "hallucination")
    }
    result_json = {
        "samples": args.n,
        "seed": args.seed,
        "fault_rate": args.fault_rate,
        "planted": counts,
        "kept": result.kept,
        "run_seconds": round(seconds, 2),
        "samples_per_second": round(args.n / seconds, 1),
        "steps": {
            s.op: {"saw": s.saw, "dropped": s.dropped, "seconds": round(s.seconds, 3)} for s in result.steps
        },
        "filters": scores,
        "kept_share_of_faults_left_to_model_filters": untouched,
    }
    summary = "; ".join(f"{k}: P={v['precision']} R={v['recall']}" for k, v in scores.items())
    emit(result_json, f"metabolism_text_filters n={args.n}: {summary}", args.json_out)


if __name__ == "__main__":
    main()
