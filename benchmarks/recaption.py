"""Recaptioning on the synthetic world: how many corrupted captions get fixed, and that no correct
caption gets worse.

Writes a synthetic pool (half the captions corrupted: wrong colour, count, shape, unrelated), starts
`vlcurate vlm serve` (tiny-synth behind the OpenAI protocol) on a free port, runs
`vlcurate recaption` over it, and checks every chosen caption against the scene's exact layout.

    python benchmarks/recaption.py                    # 600 pairs, margin 0.12, 3 rounds
    python benchmarks/recaption.py --n 200 --margin 0.02 --seed 7
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit, log, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--corrupt-fraction", type=float, default=0.5)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--margin", type=float, default=0.12)
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--work", type=Path, default=None, help="keep pool and run here (default: a temp dir)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    from tests.vlm_live import VLMServer

    from vlcurate.recaption import RecaptionConfig, recaption_dataset
    from vlcurate.synth.recaption_eval import evaluate_pool
    from vlcurate.vlm.client import VLMSettings

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        pool, out = work / "pool", work / f"run-m{args.margin:g}-r{args.rounds}"
        log(f"writing {args.n} synthetic pairs to {pool}")
        subprocess.run(
            [sys.executable, "-m", "vlcurate.cli.main", "synth", "pool", str(pool), "--n", str(args.n),
             "--seed", str(args.seed), "--corrupt-fraction", str(args.corrupt_fraction),
             "--shard-size", "200"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        with VLMServer() as vlm:
            cfg = RecaptionConfig(
                vlm=VLMSettings(base_url=vlm.base_url, max_concurrency=args.concurrency),
                k=args.k,
                rounds=args.rounds,
                margin=args.margin,
                fuse=not args.no_fuse,
                progress=False,
            )
            log(f"recaptioning with {vlm.base_url}")
            t0 = time.perf_counter()
            summary = recaption_dataset(str(pool / "shards"), out, cfg)
            seconds = time.perf_counter() - t0
        quality = evaluate_pool(pool, out, args.seed)
    run = summary["this_run"]
    result = {
        "benchmark": "recaption",
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "json_out")},
        "quality": quality,
        "mean_score_before": summary["mean_score_before"],
        "mean_score_after": summary["mean_score_after"],
        "quantiles_before": summary["quantiles_before"],
        "quantiles_after": summary["quantiles_after"],
        "chosen_origin": summary["chosen_origin"],
        "counts_by_status": summary["counts_by_status"],
        "requests": run["requests"],
        "requests_per_pair": round(run["requests"] / max(1, args.n), 2),
        "seconds": round(seconds, 1),
        "pairs_per_s": round(args.n / seconds, 2),
        "machine": machine_info(),
    }
    line = (
        f"recaption: {quality['corrupted_fixed_share']:.0%} of corrupted captions fixed "
        f"({quality['corrupted_fixed']}/{quality['corrupted']}), "
        f"{quality['correct_made_false']}/{quality['correct']} correct captions made false; "
        f"mean score {summary['mean_score_before']} -> {summary['mean_score_after']}; "
        f"{run['requests']} requests, {seconds:.0f} s"
    )
    emit(result, line, args.json_out)


if __name__ == "__main__":
    main()
