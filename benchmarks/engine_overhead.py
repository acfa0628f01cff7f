"""What running a recipe on Ray Data costs against the local engine, on the same machine and input.

Why: `--engine ray` exists to spread a recipe over a cluster; on one small machine it should not be
much slower than the local engine, or users pay for the cluster path where they have no cluster.
Both engines run the same CPU recipe (caption length, CLIP score with the tiny random model, a score
threshold and the exact global top fraction) over a synthetic pool of at least 20,000 pairs, each in
a fresh child process whose whole process tree (Ray's GCS, raylet and workers included) is sampled
for peak RSS. Figures:

* run_s / pairs_per_s: the `run_recipe` call (model load included, Ray start excluded);
* startup_s: process start to engine ready (imports; for Ray also `ray.init` of a 2-CPU instance);
* ray_overhead: local throughput / Ray throughput - 1 (target < 25%); also end to end with start-up;
* same_kept_set: every run of both engines kept exactly the same uids.

The engines take turns (`--repeats`, local then Ray, twice by default) and each engine's figures are
from its fastest run, all runs listed beside: on a small shared machine one slow run of either
engine would otherwise decide the ratio.

Run: `.venv/bin/python benchmarks/engine_overhead.py --json-out .bench/engine_overhead.json`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TreePeakRss, bench_dir, emit, log, machine_info

TARGET_OVERHEAD = 0.25
SHARD_SIZE = 2000

RECIPE = """\
source: {{input: "{pool}"}}
steps:
  - op: text_length
    min_words: 2
  - op: clip_score
    model: tiny-synth
    precision: fp32
  - op: score_threshold
    column: clip_score
    min: -0.5
  - op: top_fraction
    column: clip_score
    fraction: 0.3
sink: {{out: "{out}"}}
"""


def pool_dir(pairs: int) -> Path:
    """The synthetic pool (cached under .bench/ because writing 20,000 JPEGs takes a while)."""
    root = bench_dir() / f"engine-pool-{pairs}"
    if not (root / "truth.parquet").exists():
        from vlcurate.synth.pool import write_pool

        log(f"writing a {pairs:,}-pair synthetic pool to {root}")
        shutil.rmtree(root, ignore_errors=True)
        write_pool(root, pairs, corrupt_fraction=0.3, seed=0, shard_size=SHARD_SIZE)
    return root / "shards"


def child(engine: str, pool: str, out: str, cpus: int, t0: float) -> None:
    """Run one engine in this (fresh) process; print its timings as one JSON line."""
    from vlcurate.ops.recipe import load_recipe

    rec = load_recipe("bench.yaml", text=RECIPE.format(pool=pool, out=out))
    if engine == "ray":
        import ray

        from vlcurate.ops.engine_ray import run_recipe_ray

        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False)
        ready = time.time()
        result = run_recipe_ray(rec, progress=False)
        done = time.time()
        ray.shutdown()
    else:
        from vlcurate.ops.engine_local import run_recipe

        ready = time.time()
        result = run_recipe(rec)
        done = time.time()
    steps = {s.op: round(s.seconds, 2) for s in result.steps}
    line = {"startup_s": ready - t0, "run_s": done - ready, "rows": result.rows, "kept": result.kept}
    print(json.dumps({**line, "step_seconds": steps}), flush=True)


def measure(engine: str, pool: Path, out: Path, cpus: int) -> dict[str, Any]:
    """Run the child and sample the RSS of its whole process tree every 0.2 s."""
    shutil.rmtree(out, ignore_errors=True)
    load = round(os.getloadavg()[0], 2)
    cmd = [sys.executable, __file__, "--child", engine, "--pool", str(pool), "--out", str(out)]
    cmd += ["--cpus", str(cpus), "--t0", repr(time.time())]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    )
    with TreePeakRss(proc.pid) as rss:
        stdout, _ = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} run failed with exit code {proc.returncode}")
    res: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    res["pairs_per_s"] = res["rows"] / res["run_s"]
    res["peak_rss_mib"] = rss.peak_mib
    res["loadavg_1m_at_start"] = load
    for k in ("startup_s", "run_s", "pairs_per_s"):
        res[k] = round(res[k], 2)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray instance.")
    ap.add_argument("--repeats", type=int, default=2, help="Turns per engine; the fastest counts.")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--child", choices=["local", "ray"], help=argparse.SUPPRESS)
    ap.add_argument("--pool", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--t0", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.pool, args.out, args.cpus, args.t0)
        return
    if args.pairs < 20_000:
        log(f"note: {args.pairs:,} pairs is below the 20,000 the figure is stated for")
    pool = pool_dir(args.pairs)
    import numpy as np

    from vlcurate.io.subset import read_subset

    runs: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
    reference: np.ndarray | None = None
    same = True
    for turn in range(args.repeats):
        for engine in ("local", "ray"):
            log(f"{engine} (turn {turn + 1}/{args.repeats}): running the recipe over {args.pairs:,} pairs")
            out = bench_dir() / f"engine-run-{engine}"
            res = measure(engine, pool, out, args.cpus)
            kept = read_subset(out / "subset.npy")
            reference = kept if reference is None else reference
            res["same_kept_set"] = bool(np.array_equal(kept, reference))
            same = same and res["same_kept_set"]
            runs[engine].append(res)
            log(f"{engine}: {res}")
    best = {engine: min(rs, key=lambda r: r["run_s"]) for engine, rs in runs.items()}
    local, ray_ = best["local"], best["ray"]
    overhead = local["pairs_per_s"] / ray_["pairs_per_s"] - 1
    e2e = (ray_["startup_s"] + ray_["run_s"]) / (local["startup_s"] + local["run_s"]) - 1
    result = {
        "benchmark": "engine_overhead",
        "pairs": args.pairs,
        "shard_size": SHARD_SIZE,
        "ray_cpus": args.cpus,
        "recipe": [line.strip()[5:] for line in RECIPE.splitlines() if line.strip().startswith("- op:")],
        "machine": machine_info(),
        "repeats": args.repeats,
        "local": local,
        "ray": ray_,
        "runs": runs,
        "throughput_ratio_ray_over_local": round(ray_["pairs_per_s"] / local["pairs_per_s"], 3),
        "ray_overhead": round(overhead, 3),
        "ray_overhead_with_startup": round(e2e, 3),
        "ray_overhead_per_turn": [
            round(lo["pairs_per_s"] / ra["pairs_per_s"] - 1, 3)
            for lo, ra in zip(runs["local"], runs["ray"], strict=True)
        ],
        "same_kept_set": same,
        "targets": {"ray_overhead_max": TARGET_OVERHEAD},
        "pass": bool(overhead < TARGET_OVERHEAD and same),
    }
    summary = (
        f"engine_overhead (best of {args.repeats}): local {local['pairs_per_s']:.0f} pairs/s, "
        f"ray {ray_['pairs_per_s']:.0f} pairs/s "
        f"(overhead {overhead:+.1%}, {e2e:+.1%} with start-up {ray_['startup_s']:.1f} s vs "
        f"{local['startup_s']:.1f} s); peak RSS {local['peak_rss_mib']:.0f} vs "
        f"{ray_['peak_rss_mib']:.0f} MiB; same kept set: {same}; per turn: "
        f"{', '.join(f'{o:+.1%}' for o in result['ray_overhead_per_turn'])}"
    )
    emit(result, summary, args.json_out)


if __name__ == "__main__":
    main()
