"""`vlcurate run` over instruction data: the CLI, the sink in each format (kept samples re-read
cleanly, with images; drops with reasons; chain-of-thought twins), resume, and the Ray engine."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
from tests.instruct_io.conftest import llava, write_json
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.io.sources import open_source
from vlcurate.ops.base import Operator, set_column
from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import load_recipe
from vlcurate.ops.registry import register
from vlcurate.synth.instruct_data import make_planted

RECIPE = """\
source: {{input: "{data}", kind: instruct, options: {{samples_per_shard: 4}}}}
steps:
  - op: {first}
  - op: teacher_behaviour
  - op: answer_agreement
sink: {{out: "{out}", instruct_format: {fmt}}}
"""


@register
class _CotStandIn(Operator):
    """Test-only: adds `messages_cot` (a reasoning rewrite) to samples with a short answer, like the
    chain-of-thought operator does."""

    name = "test_cot_rewrite"
    requires = ("uid", "messages", "meta")

    def provides(self) -> tuple[str, ...]:
        return ("messages_cot",)

    def process(self, batch: pa.Table) -> pa.Table:
        out = []
        for raw, meta in zip(
            batch.column("messages").to_pylist(), batch.column("meta").to_pylist(), strict=True
        ):
            m = json.loads(meta or "{}")
            if raw and "short_answer" in m:
                msgs = json.loads(raw)
                msgs[-1]["content"] = f"Looking at the image.\nAnswer: {m['short_answer']}"
                out.append(json.dumps(msgs))
            else:
                out.append(None)
        return set_column(batch, "messages_cot", pa.array(out, pa.string()))


def _data(tmp: Path) -> tuple[Path, dict[str, str | None]]:
    """12 planted samples (images beside the JSON) plus a sample whose image is missing."""
    samples = [make_planted(i, seed=3, fault_rate=0.6) for i in range(12)]
    recs = []
    for p in samples:
        (tmp / p.sample.images[0].path).write_bytes(p.image)  # type: ignore[operator]
        turns = [
            {"from": "human" if m.role == "user" else "gpt", "value": m.content} for m in p.sample.messages
        ]
        rec = {"id": p.sample.id, "image": p.sample.images[0].path, "conversations": turns, **p.sample.meta}
        recs.append(rec)
    recs.append(llava(99, image="nowhere.png"))
    return write_json(tmp / "data.json", recs), {p.sample.id: p.fault for p in samples}


@pytest.mark.parametrize("fmt", ["llava", "openai", "hf"])
def test_cli_run_writes_kept_samples_that_reread_cleanly(tmp_path: Path, fmt: str) -> None:
    data, faults = _data(tmp_path)
    out = tmp_path / "run"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(data=data, out=out, fmt=fmt, first="instruct_repetition"))
    res = CliRunner().invoke(app, ["run", str(recipe)])
    assert res.exit_code == 0, res.output
    kept_file = out / ("kept.parquet" if fmt == "hf" else "kept.json")
    dropped = [json.loads(line) for line in (out / "dropped.jsonl").read_text().splitlines()]
    assert {"id": "s99", "reason": "image:missing image 0 (nowhere.png)"}.items() <= dropped[-1].items()
    src = open_source(str(kept_file), kind="instruct")
    again = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert all(s.meta["keep"] for s in again), [s.error for s in again]
    kept_ids = {s.key for s in again}
    assert len(kept_ids) + len(dropped) == 13
    assert {i for i, f in faults.items() if f in (None, "blind_answerable", "hallucination")} <= kept_ids
    assert all(s.image for s in again)
    if fmt != "hf":
        assert all(p.parent.name == "images" for p in (out / "images").iterdir())


def test_cot_rewrites_are_written_beside_the_originals(tmp_path: Path) -> None:
    data, _ = _data(tmp_path)
    out = tmp_path / "run"
    rec = load_recipe(
        "r.yaml", text=RECIPE.format(data=data, out=out, fmt="sharegpt", first="test_cot_rewrite")
    )
    result = run_recipe(rec)
    assert result.instruct is not None and result.instruct["cot"] > 0
    kept = json.loads((out / "kept.json").read_text())
    ids = [r["id"] for r in kept]
    twins = [i for i in ids if i.endswith("-cot")]
    assert len(twins) == result.instruct["cot"] and all(t.removesuffix("-cot") in ids for t in twins)
    twin = next(r for r in kept if r["id"].endswith("-cot"))
    assert twin["conversations"][-1]["value"].endswith(f"Answer: {twin['short_answer']}")
    assert twin["images"] == next(r for r in kept if r["id"] == twin["id"].removesuffix("-cot"))["images"]


def test_rerun_resumes_and_rewrites_the_same_output(tmp_path: Path) -> None:
    data, _ = _data(tmp_path)
    out = tmp_path / "run"
    rec = load_recipe(
        "r.yaml", text=RECIPE.format(data=data, out=out, fmt="llava", first="instruct_repetition")
    )
    first = run_recipe(rec)
    before = (out / "kept.json").read_text()
    spool = sorted((out / "stages" / "00").glob("*.parquet"))
    assert len(spool) == 4  # 13 samples, 4 per shard
    spool[0].unlink()
    second = run_recipe(rec)
    assert (first.rows, first.kept) == (second.rows, second.kept) and (
        out / "kept.json"
    ).read_text() == before


def test_synth_instruct_command(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        app, ["synth", "instruct", str(tmp_path), "--n", "40", "--seed", "1", "--format", "hf"]
    )
    assert res.exit_code == 0, res.output
    assert "wrong_language" in res.output
    truth = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert len(truth) == 40 and (tmp_path / "data.parquet").exists()
    again = tmp_path / "again"
    CliRunner().invoke(app, ["synth", "instruct", str(again), "--n", "40", "--seed", "1", "--format", "hf"])
    assert (again / "truth.jsonl").read_text() == (tmp_path / "truth.jsonl").read_text()
    bad = CliRunner().invoke(app, ["synth", "instruct", str(tmp_path / "x"), "--format", "alpaca"])
    assert bad.exit_code != 0 and "alpaca" in bad.output


@pytest.mark.slow
def test_ray_engine_runs_an_instruct_recipe_like_the_local_one(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    from vlcurate.ops.engine_ray import run_recipe_ray

    data, _ = _data(tmp_path)
    local = run_recipe(
        load_recipe(
            "r.yaml",
            text=RECIPE.format(data=data, out=tmp_path / "l", fmt="llava", first="instruct_repetition"),
        )
    )
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        rec = load_recipe(
            "r.yaml",
            text=RECIPE.format(data=data, out=tmp_path / "r", fmt="llava", first="instruct_repetition"),
        )
        remote = run_recipe_ray(rec, progress=False)
    finally:
        ray.shutdown()
    assert (remote.rows, remote.kept) == (local.rows, local.kept)
    assert (tmp_path / "r" / "kept.json").read_text() == (tmp_path / "l" / "kept.json").read_text()
