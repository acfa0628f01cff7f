"""Throughput of `vlcurate eval` (`evals.runner.run_eval`) against a local `vlcurate vlm serve`, and the
response cache on a re-run.

Why: an evaluation is thousands of requests, repeated every round of the Data Metabolism loop
(evaluate -> diagnose -> plan -> validate); its concurrency must pay off against a server with
real generation latency, and a re-run (resume, or the same questions into a fresh folder) must
come from the VLM client's cache instead of the model.

* The tiny-synth server with `--latency-ms 50` (a real VLM takes tens to hundreds of ms per answer,
  so concurrency matters) on the synthetic benchmark (`vlcurate synth bench`, every category).
* One warm-up run (thrown away: the server's image embeddings and captions are cached after it),
  then the benchmark at concurrency 1, 4 and 16 into fresh folders with the cache off: items/s,
  and the speed-up against concurrency 1 measured in the same run; every run must give the same
  answers (`same_answers`).
* The cache: a run at concurrency 16 with a cache folder, then the same command into a fresh
  folder with that cache: the hit rate (should be 1.0) and items/s from the cache.

`items_per_s` is the asking phase (requests, scoring, the per-sample log); `items_per_s_wall` adds
reading the benchmark and writing the report with its plot (a fixed ~0.5 s).

Run: `.venv/bin/python benchmarks/eval_throughput.py --json-out .bench/eval_throughput.json`
(~1 minute; `--quick` ~20 s).
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
from vlcurate.evals.config import EvalConfig  # noqa: E402
from vlcurate.evals.results import load_run  # noqa: E402
from vlcurate.evals.runner import run_eval  # noqa: E402
from vlcurate.synth.bench import make_benchmark  # noqa: E402


def timed_run(config: EvalConfig) -> tuple[dict[str, Any], dict[tuple[str, int], str | None]]:
    t0 = time.perf_counter()
    s = run_eval(config, progress=False)
    wall = time.perf_counter() - t0
    answers = {k: r.response for k, r in load_run(config.out).by_key().items()}
    run = json.loads((config.out / "report.json").read_text())["run"]
    row = {
        "concurrency": config.concurrency,
        "items": s.answered,
        "ask_seconds": run["elapsed_s"],  # asking and logging only
        "items_per_s": run["items_per_s"],
        "wall_seconds": round(wall, 3),  # with reading the benchmark and writing the report and plot
        "items_per_s_wall": round(s.answered / wall, 2),
        "cache_hits": s.cache_hits,
        "accuracy": s.overall.accuracy,
        "errors": s.status_counts.get("error", 0),
    }
    return row, answers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=120, help="benchmark items")
    ap.add_argument("--latency-ms", type=float, default=50.0, help="emulated generation latency")
    ap.add_argument("--quick", action="store_true", help="48 items")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()
    n = 48 if args.quick else args.n
    work = bench_dir() / "eval_throughput"
    shutil.rmtree(work, ignore_errors=True)
    bench = make_benchmark(work / "bench", n, seed=11)
    info = machine_info()
    log(f"benchmark: {n} items; server latency {args.latency_ms:g} ms")
    with VLMServer(["--latency-ms", str(args.latency_ms)]) as vlm:

        def config(name: str, concurrency: int, cache: Path | None = None) -> EvalConfig:
            return EvalConfig(
                endpoint=vlm.base_url,
                bench=str(bench),
                out=work / name,
                concurrency=concurrency,
                cache_dir=cache,
            )

        timed_run(config("warmup", 16))
        rows, answers = [], []
        for c in (1, 4, 16):
            row, ans = timed_run(config(f"c{c}", c))
            log(f"concurrency {c}: {row['items_per_s']} items/s")
            rows.append(row)
            answers.append(ans)
        base = rows[0]["items_per_s"]
        for row in rows:
            row["speedup_vs_1"] = round(row["items_per_s"] / base, 2)
        cache = work / "cache"
        filled, _ = timed_run(config("cache-fill", 16, cache))
        again, cached_answers = timed_run(config("cache-rerun", 16, cache))
        hit_rate = again["cache_hits"] / again["items"] if again["items"] else 0.0
        log(f"re-run from the cache: hit rate {hit_rate:.3f}, {again['items_per_s']} items/s")
    result = {
        "benchmark": "eval_throughput",
        "machine": info,
        "precision": "float32 (tiny-synth on CPU, 1 torch thread in the server)",
        "server": {"model": "tiny-synth", "latency_ms": args.latency_ms},
        "items": n,
        "by_concurrency": rows,
        "same_answers": all(a == answers[0] for a in answers) and cached_answers == answers[0],
        "cache": {"fill": filled, "rerun": again, "hit_rate": round(hit_rate, 4)},
    }
    summary = (
        f"eval throughput ({n} items, {args.latency_ms:g} ms latency): "
        + ", ".join(f"c={r['concurrency']} {r['items_per_s']}/s" for r in rows)
        + f"; cache re-run hit rate {hit_rate:.3f} at {again['items_per_s']}/s"
    )
    emit(result, summary, args.json_out)


if __name__ == "__main__":
    main()
