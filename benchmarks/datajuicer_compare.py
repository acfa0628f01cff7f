"""vlcurate against Data-Juicer: the same filter chain, the same random CLIP weights, the same pairs.

Why: Data-Juicer is what many users curate image-text data with; "how much faster" only means
something when both tools run the same chain with the same model on the same pairs on one machine.
The chain, in this order on both sides:

1. caption length >= MIN_CHARS characters (DJ `text_length_filter`; ours `text_length`);
2. shorter image side >= MIN_SIDE px (DJ `image_shape_filter`; ours `image_quality min_side`);
3. CLIP cosine similarity >= CLIP_MIN (DJ `image_text_similarity_filter`; ours `clip_score` +
   `score_threshold`), both with ONE seeded random ViT-B/32 `CLIPModel` saved in transformers'
   format (ours loads it as `hf-clip:FOLDER`), fp32 on both sides for the ratio;
4. pHash duplicates removed, exact hash match (DJ `image_deduplicator method=phash`, imagededup's
   pHash; ours `near_dedup max_distance=0`, our own 64-bit pHash).

The pairs are the real photos of `shared/data/coco-mini`, repeated with their other captions to
the requested count (the same pairs as `score_throughput.py`). DJ reads a JSONL whose `images` are
the photo files; ours reads the WebDataset shards holding the same bytes. Each tool runs in a fresh
child process (DJ in its own venv, `.bench/dj-venv`, created here when missing) whose process tree
is sampled for peak RSS. Reported: wall seconds end to end (process start to exit) and without
start-up and model load, pairs/s, the ratio, peak RSS, and agreement: per-pair scores of the pairs
both scored, each pair's threshold decision, the kept photos after dedup, and a check that feeds
our scorer transformers' own pixels (then only float rounding should remain).

Data-Juicer's venv: `python3 -m venv .bench/dj-venv && .bench/dj-venv/bin/pip install torch==2.13.0
&& .bench/dj-venv/bin/pip install -c constraints.txt py-data-juicer transformers imagededup aiohttp
ray` (torch first: the constraints file pins it, and this gives the local CPU wheel).

Run: `.venv/bin/python benchmarks/datajuicer_compare.py --json-out .bench/datajuicer_compare.json`
(all three runs, one after the other). On a 2-core machine one fp32 run of 5,000 pairs takes about
8.5 minutes, so each run of each half goes in its own slot, and the last one to finish (or
`--report`) merges them and prints the JSON: seconds add up, peak RSS is the larger half's, and
dedup happens within each half on both sides:

    for part in 1 2; do for run in dj ours ours_bf16; do
      .venv/bin/python benchmarks/datajuicer_compare.py --parts 2 --part $part --only $run --json-out X
    done; done
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO_ROOT, bench_dir, emit, log, machine_info
from dj_compare_support import (
    agreement,
    dj_process,
    ensure_dj_venv,
    preprocessing_check,
    run_measured,
    write_dj_jsonl,
)
from score_throughput import SHARD_SIZE, coco_dir, ensure_shards, load_photos, make_pairs

MIN_CHARS = 40
MIN_SIDE = 360
CLIP_MIN = -0.03  # about the median cosine of this random model on these pairs
SEED = 0

OUR_RECIPE = """\
source: {{input: "{shards}"}}
steps:
  - op: text_length
    min_chars: {min_chars}
  - op: image_quality
    min_side: {min_side}
  - op: clip_score
    model: "hf-clip:{model}"
    precision: {precision}
    batch_size: 64
  - op: score_threshold
    column: clip_score
    min: {clip_min}
  - op: near_dedup
    max_distance: 0
sink: {{out: "{out}"}}
"""


RUNS = ["dj", "ours", "ours_bf16"]


def work_dir() -> Path:
    path = bench_dir() / "dj-compare"
    path.mkdir(parents=True, exist_ok=True)
    return path


def ensure_model(seed: int) -> Path:
    """One seeded random ViT-B/32 CLIPModel in transformers' format, shared by both tools."""
    folder = work_dir() / f"clip-vit-b32-random-seed{seed}"
    if not (folder / "model.safetensors").exists():
        from vlcurate.models.hf_clip_files import save_random_clip

        log(f"saving a random ViT-B/32 CLIPModel (seed {seed}) to {folder}")
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_random_clip(tmp, seed=seed)
        os.replace(tmp, folder)
    return folder


def part_range(pairs: int, part: int, parts: int) -> tuple[int, int]:
    """Pairs [start, end) of part `part` (1-based) of `parts`, on shard boundaries."""
    shards = -(-pairs // SHARD_SIZE)
    first, last = (part - 1) * shards // parts, part * shards // parts
    return first * SHARD_SIZE, min(pairs, last * SHARD_SIZE)


def prepare(pairs: int, part: int, parts: int) -> tuple[Path, Path, list[Any]]:
    """Our shard folder (links to the cached shards) and DJ's JSONL holding this part's pairs, and
    the list of all pairs."""
    photos = load_photos(coco_dir())
    start, end = part_range(pairs, part, parts)
    shards = ensure_shards(photos, pairs)[start // SHARD_SIZE : -(-end // SHARD_SIZE)]
    tag = f"{pairs}-{part}of{parts}"
    folder = work_dir() / f"shards-{tag}"
    folder.mkdir(exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for path in shards:
        (folder / path.name).symlink_to(path)
    jsonl = work_dir() / f"pairs-{tag}.jsonl"
    pair_list = make_pairs(photos, pairs)
    write_dj_jsonl(jsonl, pair_list[start:end], coco_dir())
    return folder, jsonl, pair_list


def child_ours(recipe_text: str, t0: float) -> None:
    """Run our recipe in this fresh process; write timings, kept uids and scores as JSON (DJC_RESULT)."""
    imports_start = time.time()
    import pyarrow.parquet as pq

    import vlcurate.models.loader as clip_mod
    from vlcurate.ops.engine_local import run_recipe
    from vlcurate.ops.recipe import load_recipe

    load = {"seconds": 0.0}
    inner = clip_mod.load_scorer

    def timed_load(*args: Any, **kwargs: Any) -> Any:
        t = time.perf_counter()
        out = inner(*args, **kwargs)
        load["seconds"] += time.perf_counter() - t
        return out

    clip_mod.load_scorer = timed_load
    imports_done = time.time()
    rec = load_recipe("dj-compare.yaml", text=recipe_text)
    ready = time.time()
    result = run_recipe(rec)
    done = time.time()
    scores: dict[str, float | None] = {}
    kept: list[str] = []
    for path in sorted((result.out / "decisions").glob("*.parquet")):
        t = pq.read_table(path, columns=["uid", "clip_score", "keep"]).to_pylist()
        for row in t:
            s = row["clip_score"]
            scores[row["uid"]] = None if s is None or s != s else float(s)
            if row["keep"]:
                kept.append(row["uid"])
    line = {
        "startup_s": imports_done - t0,
        "imports_s": imports_done - imports_start,
        "recipe_s": ready - imports_done,
        "run_s": done - ready,
        "model_load_s": load["seconds"],
        "rows": result.rows,
        "steps": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.__dict__.items()}
            for s in result.steps
        ],
        "kept": kept,
        "scores": scores,
    }
    Path(os.environ["DJC_RESULT"]).write_text(json.dumps(line))


def run_ours(shards: Path, model: Path, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    out = work_dir() / f"ours-{precision}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = OUR_RECIPE.format(
        shards=shards,
        model=model,
        precision=precision,
        min_chars=args.min_chars,
        min_side=args.min_side,
        clip_min=args.clip_min,
        out=out,
    )
    (work_dir() / f"ours-{precision}.yaml").write_text(recipe)
    cmd = [sys.executable, __file__, "--child-ours", str(work_dir() / f"ours-{precision}.yaml")]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return run_measured(cmd, env=env, result=work_dir() / f"ours-{precision}.result.json")


def run_dj(jsonl: Path, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    python = ensure_dj_venv(REPO_ROOT)
    job_dir = work_dir() / "dj-run"
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    job = {
        "dataset": str(jsonl),
        "export": str(job_dir / "export" / "kept.jsonl"),
        "work_dir": str(job_dir / "work"),
        "np": args.dj_np,
        "torch_threads": max(1, (os.cpu_count() or 1) // args.dj_np),  # no oversubscription
        "process": dj_process(model, args.min_chars, args.min_side, args.clip_min),
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=2))
    cmd = [str(python), str(Path(__file__).with_name("dj_runner.py")), str(job_dir / "job.json")]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RAY_USAGE_STATS_ENABLED": "0",
        "TOKENIZERS_PARALLELISM": "false",
    }
    env.pop("PYTHONPATH", None)
    return run_measured(cmd, env=env, result=job_dir / "result.json")


def raw_path(args: argparse.Namespace, part: int, run: str) -> Path:
    """Where one run of one part keeps its raw result, named by everything that changes it."""
    chain = f"c{args.min_chars}-s{args.min_side}-t{args.clip_min}-np{args.dj_np}"
    tag = f"{args.pairs}-{part}of{args.parts}-{chain}"
    (work_dir() / "raw").mkdir(exist_ok=True)
    return work_dir() / "raw" / f"{run}-{tag}.json"


def collect(args: argparse.Namespace) -> dict[str, dict[str, Any]] | None:
    """Every run's parts merged: seconds add up, peak RSS is the largest, uids and scores join.

    None while a needed part is missing (the bf16 run is optional).
    """
    merged: dict[str, dict[str, Any]] = {}
    for run in RUNS:
        paths = [raw_path(args, i, run) for i in range(1, args.parts + 1)]
        if not all(p.exists() for p in paths):
            if run == "ours_bf16":
                continue
            return None
        parts = [json.loads(p.read_text()) for p in paths]
        out = dict(parts[0])
        for key in ("wall_s", "startup_s", "model_load_s", "run_s"):
            out[key] = sum(float(r[key]) for r in parts)
        out["peak_rss_mib"] = max(float(r["peak_rss_mib"]) for r in parts)
        out["kept"] = [u for r in parts for u in r["kept"]]
        out["scores"] = {u: s for r in parts for u, s in r["scores"].items()}
        if "steps" in parts[0]:
            out["steps"] = [
                {
                    **a,
                    **{
                        k: round(sum(r["steps"][i][k] for r in parts), 2)
                        for k in ("saw", "kept", "dropped", "seconds")
                    },
                }
                for i, a in enumerate(parts[0]["steps"])
            ]
        out["started_utc"] = [r["started_utc"] for r in parts]
        out["loadavg_1m_before"] = [r["loadavg_1m_before"] for r in parts]
        merged[run] = out
    return merged


def summarise(res: dict[str, Any], pairs: int) -> dict[str, Any]:
    """Timings of one run without the bulky lists: end to end and without start-up and model load."""
    wall = res["wall_s"]
    processing = res["run_s"] - res["model_load_s"]
    out = {
        "wall_s": round(wall, 2),
        "startup_s": round(res["startup_s"], 2),
        "model_load_s": round(res["model_load_s"], 2),
        "run_s": round(res["run_s"], 2),
        "processing_s": round(processing, 2),
        "pairs_per_s_wall": round(pairs / wall, 1),
        "pairs_per_s_processing": round(pairs / processing, 1),
        "peak_rss_mib": res["peak_rss_mib"],
        "kept": len(res["kept"]),
    }
    keys = ("started_utc", "loadavg_1m_before", "steps", "versions", "torch_threads", "executor_init_s")
    for key in (*keys, "model_loads"):
        if key in res:
            out[key] = res[key]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=5000)
    ap.add_argument("--min-chars", type=int, default=MIN_CHARS)
    ap.add_argument("--min-side", type=int, default=MIN_SIDE)
    ap.add_argument("--clip-min", type=float, default=CLIP_MIN)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument(
        "--dj-np", type=int, default=os.cpu_count() or 1, help="Data-Juicer's worker processes (np)."
    )
    ap.add_argument(
        "--only",
        choices=RUNS,
        help="Do one of the three runs (each in its own exclusive slot); results merge in .bench/.",
    )
    ap.add_argument(
        "--parts",
        type=int,
        default=1,
        help="Split the pairs into this many contiguous parts, each run in its own process (and slot).",
    )
    ap.add_argument("--part", type=int, default=1, help="Which part (1-based) this invocation runs.")
    ap.add_argument("--no-bf16", action="store_true", help="Skip the second run of ours at bf16.")
    ap.add_argument("--report", action="store_true", help="Run nothing; merge the saved runs and report.")
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--child-ours", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child_ours:
        child_ours(Path(args.child_ours).read_text(), float(os.environ.get("DJC_T0", time.time())))
        return
    if not 1 <= args.part <= args.parts:
        raise SystemExit("--part must be in 1..--parts")
    shards, jsonl, pair_list = prepare(args.pairs, args.part, args.parts)
    start, end = part_range(args.pairs, args.part, args.parts)
    n = end - start
    model = ensure_model(args.seed)
    runs = [] if args.report else RUNS if args.only is None else [args.only]
    if args.no_bf16 and args.only is None:
        runs = [r for r in runs if r != "ours_bf16"]
    for name in runs:
        log(f"{name}: pairs [{start:,}, {end:,}) (part {args.part} of {args.parts})")
        if name == "dj":
            res = run_dj(jsonl, model, args)
        else:
            res = run_ours(shards, model, "bf16" if name == "ours_bf16" else "fp32", args)
        raw_path(args, args.part, name).write_text(json.dumps(res))
        log(f"{name}: {summarise(res, n)}")
    raw = collect(args)
    if raw is None:
        log("not every part of every run is there yet; run the others with --part/--only to finish")
        return
    photo_of = {str(p.uid): p.photo.file_name for p in pair_list}
    dj, ours = summarise(raw["dj"], args.pairs), summarise(raw["ours"], args.pairs)
    result: dict[str, Any] = {
        "benchmark": "datajuicer_compare",
        "pairs": args.pairs,
        "parts": args.parts,
        "photos": len(set(photo_of.values())),
        "chain": {
            "min_chars": args.min_chars,
            "min_side": args.min_side,
            "clip_min": args.clip_min,
            "dedup": "phash, exact match"
            + (f", within each of {args.parts} parts" if args.parts > 1 else ""),
            "model": f"random ViT-B/32 CLIPModel, seed {args.seed}, transformers format, fp32",
            "dj_np": args.dj_np,
        },
        "machine": machine_info(),
        "data_juicer": dj,
        "vlcurate_fp32": ours,
        "speedup_wall": round(dj["wall_s"] / ours["wall_s"], 2),
        "speedup_processing": round(dj["processing_s"] / ours["processing_s"], 2),
        "agreement_fp32": agreement(raw["dj"], raw["ours"], photo_of, args.clip_min),
    }
    log("checking where score differences come from (the same model on both tools' pixels)")
    result["preprocessing_check"] = preprocessing_check(model, pair_list, raw["dj"]["scores"])
    if "ours_bf16" in raw:
        bf16 = summarise(raw["ours_bf16"], args.pairs)
        result["vlcurate_bf16"] = bf16
        result["speedup_wall_bf16"] = round(dj["wall_s"] / bf16["wall_s"], 2)
        result["speedup_processing_bf16"] = round(dj["processing_s"] / bf16["processing_s"], 2)
        result["agreement_bf16"] = agreement(raw["dj"], raw["ours_bf16"], photo_of, args.clip_min)
    agree = result["agreement_fp32"]
    summary = (
        f"datajuicer_compare: {args.pairs:,} pairs; Data-Juicer {dj['wall_s']:.1f} s "
        f"({dj['pairs_per_s_wall']:.1f} pairs/s), vlcurate fp32 {ours['wall_s']:.1f} s "
        f"({ours['pairs_per_s_wall']:.1f} pairs/s): {result['speedup_wall']}x end to end, "
        f"{result['speedup_processing']}x without start-up and model load; peak RSS "
        f"{dj['peak_rss_mib']:.0f} vs {ours['peak_rss_mib']:.0f} MiB; scores max |diff| "
        f"{agree['score_max_abs_diff']}, same kept photos: {agree['same_kept_photos']}"
    )
    emit(result, summary, args.json_out)


if __name__ == "__main__":
    main()
