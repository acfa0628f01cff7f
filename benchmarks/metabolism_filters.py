"""Data Metabolism filters on synthetic instruction data with planted faults: precision and recall
of each filter, and how many chain-of-thought rewrites survive the short-answer check.

Writes `vlcurate synth instruct` data (half the samples with one planted fault: repetition,
refusal, wrong language, wrong format, wrong answer, blind-answerable question, hallucinated
object), starts `vlcurate vlm serve` (tiny-synth behind the OpenAI protocol), runs
recipes/metabolism_synth.yaml with `vlcurate run`, and scores every drop against truth.jsonl.
A dropped sample counts for the first step that dropped it; a filter's positives are its fault class.

    python benchmarks/metabolism_filters.py                 # 2,000 samples, fault rate 0.5
    python benchmarks/metabolism_filters.py --n 500 --seed 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import REPO_ROOT, emit, log, machine_info
from vlcurate.synth.instruct_eval import precision_recall

# Filter -> (the reasons that count as its drops, the planted faults it is meant to catch).
FILTERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "instruct_repetition": (("repetition:",), ("repetition",)),
    "teacher_behaviour:refusal": (("refusal",), ("refusal",)),
    "teacher_behaviour:language+format": (("language:", "format:"), ("wrong_language", "wrong_format")),
    "answer_agreement": (("answer_mismatch",), ("wrong_answer",)),
    "blind_answerable": (("blind_answerable",), ("blind_answerable",)),
    "hallucination": (("hallucination:",), ("hallucination",)),
}


def filter_of(reason: str) -> str:
    """The FILTERS entry a drop reason belongs to (the reason itself when none claims it)."""
    return next((name for name, (prefixes, _) in FILTERS.items() if reason.startswith(prefixes)), reason)


def score_filters(rows: list[dict[str, Any]], truth: dict[str, str | None]) -> dict[str, dict[str, Any]]:
    targets = {name: faults for name, (_, faults) in FILTERS.items()}
    return precision_recall(rows, truth, targets, attribute=filter_of)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fault-rate", type=float, default=0.5)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument(
        "--vlm-only",
        action="store_true",
        help="blind_answerable without its answer-in-question check: the blind VLM answer alone",
    )
    ap.add_argument("--work", type=Path, default=None, help="keep data and run here (default: a temp dir)")
    ap.add_argument("--json-out", default=None)
    args = ap.parse_args()

    import pyarrow as pa
    import pyarrow.parquet as pq
    from tests.vlm_live import VLMServer

    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        data, out = work / "instruct", work / "run"
        log(f"writing {args.n} synthetic instruction samples to {data}")
        subprocess.run(
            [sys.executable, "-m", "vlcurate.cli.main", "synth", "instruct", str(data), "--n", str(args.n),
             "--seed", str(args.seed), "--fault-rate", str(args.fault_rate), "--format", "llava"],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        recipe = yaml.safe_load((REPO_ROOT / "recipes" / "metabolism_synth.yaml").read_text())
        recipe["source"]["input"] = str(data / "data.json")
        recipe["sink"]["out"] = str(out)
        with VLMServer() as vlm:
            for step in recipe["steps"]:
                if step["op"] == "blind_answerable" and args.vlm_only:
                    step["answer_in_question"] = False
                if "vlm" in step:
                    step["vlm"] = {
                        **step["vlm"],
                        "base_url": vlm.base_url,
                        "max_concurrency": args.concurrency,
                    }
            path = work / "recipe.yaml"
            path.write_text(yaml.safe_dump(recipe, sort_keys=False))
            log(f"running {path} against {vlm.base_url}")
            t0 = time.perf_counter()
            subprocess.run(
                [sys.executable, "-m", "vlcurate.cli.main", "run", str(path)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            seconds = time.perf_counter() - t0
        truth = {
            r["uid"]: r["fault"] for r in map(json.loads, (data / "truth.jsonl").read_text().splitlines())
        }
        tables = [pq.read_table(p) for p in sorted((out / "decisions").glob("*.parquet"))]
        rows = pa.concat_tables(tables, promote_options="default").to_pylist()
        report = json.loads((out / "report.json").read_text())
        written = sorted(p.name for p in out.iterdir() if p.suffix == ".json" and p.name != "report.json")

    filters = score_filters(rows, truth)
    cot = Counter(str(r["cot_status"]).split(":")[0] for r in rows if r.get("cot_status"))
    asked = sum(cot.values())
    blind = Counter(r.get("blind_status") for r in rows if r["reason"] == "blind_answerable")
    result = {
        "benchmark": "metabolism_filters",
        "settings": {k: v for k, v in vars(args).items() if k not in ("work", "json_out")},
        "samples": len(rows),
        "kept": sum(bool(r["keep"]) for r in rows),
        "planted": dict(Counter(f or "clean" for f in truth.values())),
        "filters": filters,
        "blind_answerable_by": {
            "answer_in_question": blind.get("leak", 0),
            "vlm_blind_answer": blind.get("ok", 0),
        },
        "cot": {
            "asked": asked,
            "kept_share": round(cot.get("ok", 0) / asked, 4) if asked else None,
            "mismatch_share": round(cot.get("mismatch", 0) / asked, 4) if asked else None,
            "error_share": round(cot.get("error", 0) / asked, 4) if asked else None,
        },
        "steps": [
            {k: (round(v, 2) if isinstance(v, float) else v) for k, v in s.items()} for s in report["steps"]
        ],
        "sink_files": written,
        "seconds": round(seconds, 1),
        "machine": machine_info(),
    }
    worst = min((f["precision"] or 0.0, f["recall"] or 0.0) for f in filters.values())
    pr = ", ".join(f"{k} {v['precision']}/{v['recall']}" for k, v in filters.items())
    c = result["cot"]
    line = (
        f"metabolism filters (precision/recall): {pr}; min {min(worst):.2f}; "
        f"CoT kept {c['kept_share']} mismatched {c['mismatch_share']}; {seconds:.0f} s"
    )
    emit(result, line, args.json_out)


if __name__ == "__main__":
    main()
