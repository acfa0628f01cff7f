"""Hand-made evaluation runs for the diagnosis tests: synthetic-world items answered by a rule.

`write_run(run, n, seed, fail=...)` writes RUN/samples.jsonl, summary.json, config.json and the
PNG images (next to a bench.jsonl, as a benchmark would have them); `fail(item)` returns the
status and wrong answer for items the simulated model gets wrong, or None when it answers right.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from vlcurate.evals.results import SampleResult, summarize
from vlcurate.metabolism.plan import CollectAction
from vlcurate.synth.scene import scene_from_seed
from vlcurate.synth.vocab import COLOUR_NAMES, PLURALS, SHAPES

Item = dict[str, Any]
Rule = Callable[[Item], tuple[str, str | None] | None]


def bench_items(n: int, seed: int = 0) -> list[tuple[Item, bytes]]:
    """n questions about synthetic scenes, with the attribute they are about in meta."""
    out: list[tuple[Item, bytes]] = []
    i = 0
    while len(out) < n:
        scene = scene_from_seed(seed, i)
        rng = np.random.default_rng([seed, i])
        objs = scene.layout.objects
        o = objs[int(rng.integers(len(objs)))]
        kind = ("colour", "shape", "count", "exists")[i % 4]
        if kind == "colour" and sum(x.shape == o.shape for x in objs) == 1:
            q, a = f"What colour is the {o.shape}?", o.colour
        elif kind == "shape" and sum(x.colour == o.colour for x in objs) == 1:
            q, a = f"What shape is the {o.colour} object?", o.shape
        elif kind == "count":
            q = f"How many {o.colour} {PLURALS[o.shape]} are there?"
            a = str(sum(x.shape == o.shape and x.colour == o.colour for x in objs))
        else:
            kind, q, a = "exists", f"Is there a {o.colour} {o.shape}?", "yes"
        item = {
            "id": f"q{seed}-{i:04d}",
            "image": f"images/{seed}-{i:04d}.png",
            "question": q,
            "type": "short",
            "answer": a,
            "category": kind,
            "meta": {"colour": o.colour, "shape": o.shape},
        }
        out.append((item, scene.encode("png")))
        i += 1
    return out


def wrong_for(item: Item) -> str:
    a = item["answer"]
    if item["category"] == "colour":
        return next(c for c in COLOUR_NAMES if c != a)
    if item["category"] == "shape":
        return next(s for s in SHAPES if s != a)
    if item["category"] == "count":
        return str(int(a) + 1)
    return "no" if a == "yes" else "yes"


def blind_to(colour: str) -> Rule:
    def rule(item: Item) -> tuple[str, str | None] | None:
        return ("ok", wrong_for(item)) if item["meta"]["colour"] == colour else None

    return rule


def write_run(
    root: Path, n: int = 80, seed: int = 0, fail: Rule | None = None, endpoint: str | None = None
) -> Path:
    """A benchmark folder root/bench (bench.jsonl + images) and a run root/run answering it."""
    bench, run = root / "bench", root / "run"
    (bench / "images").mkdir(parents=True, exist_ok=True)
    run.mkdir(parents=True, exist_ok=True)
    rows: list[SampleResult] = []
    with (bench / "bench.jsonl").open("w") as bf:
        for item, png in bench_items(n, seed):
            (bench / item["image"]).write_bytes(png)
            bf.write(json.dumps(item) + "\n")
            verdict = fail(item) if fail else None
            status, got = verdict if verdict else ("ok", item["answer"])
            rows.append(
                SampleResult(
                    id=item["id"],
                    category=item["category"],
                    type=item["type"],
                    question=item["question"],
                    answer=item["answer"],
                    image=item["image"],
                    response=got,
                    extracted=got if status == "ok" else None,
                    correct=(got == item["answer"]) if status == "ok" else False,
                    status=status,  # type: ignore[arg-type]
                    meta=item["meta"],
                )
            )
    with (run / "samples.jsonl").open("w") as f:
        for r in rows:
            f.write(r.model_dump_json() + "\n")
    summary = summarize(rows, model="tiny-synth", bench=str(bench / "bench.jsonl"), expected=len(rows))
    (run / "summary.json").write_text(summary.model_dump_json())
    cfg = {"bench": str(bench / "bench.jsonl"), "model": "tiny-synth", "out": str(run)}
    if endpoint:
        cfg["endpoint"] = endpoint
    (run / "config.json").write_text(json.dumps(cfg))
    return run


def collect_action(
    request: str, focus: dict[str, str], category: str | None, queries: list[str]
) -> CollectAction:
    """A plan's collect action a01 for 6 samples, as `plan` writes one (evidence: weakness w01)."""
    return CollectAction.model_validate(
        {
            "id": "a01",
            "n": 6,
            "category": category,
            "focus": focus,
            "build_request": request,
            "build_spec": "requests/a01.yaml",
            "retrieval_queries": queries,
            "game_pool": {},
            "evidence": {
                "weakness": "w01",
                "kind": "perception",
                "label": "x",
                "score": 1.0,
                "failing_ids": [],
            },
        }
    )
