"""The local engine runs a recipe end to end: decisions with reasons, a DataComp subset, a report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.cli.main import app
from vlcurate.io.subset import read_subset
from vlcurate.ops.base import Operator, StepError, run_step
from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import load_recipe


def _recipe(pool: Path, out: Path) -> str:
    return f"""\
source: {{input: "{pool}"}}
steps:
  - op: clip_score
    model: tiny-synth
    precision: fp32
  - op: score_threshold
    column: clip_score
    min: -0.5
  - op: top_fraction
    column: clip_score
    fraction: 0.5
sink: {{out: "{out}"}}
"""


def test_clip_score_then_top_fraction_matches_score_and_filter(small_pool: Path, tmp_path: Path) -> None:
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run"))
    result = run_recipe(rec)
    assert result.rows == 300
    steps = {s.op: s for s in result.steps}
    assert steps["clip_score"].saw == 300 and steps["clip_score"].dropped == 0
    assert steps["top_fraction"].saw == steps["score_threshold"].kept
    decisions = [
        r
        for f in sorted((tmp_path / "run" / "decisions").glob("*.parquet"))
        for r in pq.read_table(f).to_pylist()
    ]
    assert len(decisions) == 300 and "image" not in decisions[0]
    assert all((r["keep"] and r["reason"] is None) or (not r["keep"] and r["reason"]) for r in decisions)
    kept = {r["uid"] for r in decisions if r["keep"]}
    assert len(kept) == result.kept == 150  # top half of every pair with a score, ties none here

    # The same selection as `vlcurate score` + `vlcurate filter --top-fraction 0.5` (fp32 both).
    from vlcurate.ops.score_filter import run_filter
    from vlcurate.ops.score_filter_config import FilterConfig
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    score_dataset(
        str(small_pool),
        tmp_path / "s",
        ScoreConfig(model="tiny-synth", precision="fp32", progress=False, workers=0),
    )
    run_filter(str(tmp_path / "s"), tmp_path / "f", FilterConfig(top_fraction=0.5))
    ref = read_subset(tmp_path / "f" / "subset.npy")
    ours = read_subset(result.subset)  # type: ignore[arg-type]
    assert np.array_equal(np.sort(ours), np.sort(ref))
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["kept"] == 150 and [s["op"] for s in report["steps"]] == [
        "clip_score",
        "score_threshold",
        "top_fraction",
    ]


def test_a_rerun_reuses_finished_stages(small_pool: Path, tmp_path: Path) -> None:
    rec = load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run"))
    first = run_recipe(rec)
    spools = sorted((tmp_path / "run" / "stages").rglob("*.parquet"))
    mtimes = [p.stat().st_mtime_ns for p in spools]
    again = run_recipe(load_recipe("r.yaml", text=_recipe(small_pool, tmp_path / "run")))
    assert [p.stat().st_mtime_ns for p in spools] == mtimes  # nothing recomputed
    assert np.array_equal(read_subset(first.subset), read_subset(again.subset))  # type: ignore[arg-type]


def test_cli_run_check_and_ops(small_pool: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe(small_pool, tmp_path / "run"))
    runner = CliRunner()
    r = runner.invoke(app, ["run", str(recipe), "--check"])
    assert r.exit_code == 0 and "valid (3 steps" in r.stdout
    r = runner.invoke(app, ["run", str(recipe)])
    assert r.exit_code == 0 and "150 of 300 pairs kept" in r.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(_recipe(small_pool, tmp_path / "run").replace("op: top_fraction", "op: top_fractoin"))
    r = runner.invoke(app, ["run", str(bad)])
    assert r.exit_code == 2 and "bad.yaml:9: step 3: unknown operator 'top_fractoin'" in r.stderr
    r = runner.invoke(app, ["ops"])
    assert r.exit_code == 0 and "clip_score" in r.stdout and "top_fraction" in r.stdout


def test_an_out_of_memory_batch_backs_off_to_smaller_batches(small_pool: Path, monkeypatch: Any) -> None:
    from vlcurate.io.sources import open_source
    from vlcurate.models.loader import load_scorer
    from vlcurate.score.memory import score_pairs

    scorer = load_scorer("tiny-synth", precision="fp32")
    src = open_source(str(small_pool))
    samples = list(src.iter_samples(src.shards()[0]))[:40]
    images, texts = [s.image for s in samples], [s.text for s in samples]
    want = [p.score for p in score_pairs(scorer, images, texts, batch_size=40)]
    real = scorer.encode_images
    seen: list[int] = []

    def limited(arr: Any) -> Any:
        seen.append(len(arr))
        if len(arr) > 10:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real(arr)

    monkeypatch.setattr(scorer, "encode_images", limited)
    got = [p.score for p in score_pairs(scorer, images, texts, batch_size=40)]
    assert seen[:3] == [40, 20, 10] and max(seen[3:]) == 10
    assert np.allclose(np.array(got, dtype=float), np.array(want, dtype=float), atol=1e-5)


def test_a_missing_shard_is_one_clear_line(small_pool: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f'source: {{input: "{small_pool}/{{00000000..00000009}}.tar"}}\n'
        "steps:\n  - op: text_length\n    min_words: 2\n"
        f'sink: {{out: "{tmp_path / "out"}"}}\n'
    )
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == EXIT_PARTIAL, r.output  # the shards that are there ran; the others failed
    assert "of 300 pairs kept" in r.stdout and "Traceback" not in r.output
    assert "shard 00000009 failed: shard not found" in r.stderr and "7 shard(s) failed" in r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert len(report["failures"]["failed_shards"]) == 7 and report["rows"] == 300
    check = CliRunner().invoke(app, ["run", str(recipe), "--check"])  # found before anything runs
    assert check.exit_code == 2 and "source: 7 of 10 shards not found" in check.stderr


def test_clip_score_keeps_embeddings_for_the_embedding_steps(small_pool: Path, tmp_path: Path) -> None:
    """`embeddings: true` writes float16 image and text embeddings (NaN rows where a pair could not
    be scored), so `semantic_dedup` and the other embedding steps can follow it in a recipe."""
    from vlcurate.ops.pair_ops import ClipScore, ClipScoreParams, embeddings_of
    from vlcurate.synth import scene_from_seed

    scenes = [scene_from_seed(0, i) for i in range(3)]
    batch = pa.table(
        {
            "uid": [f"{i:032x}" for i in range(4)],
            "text": [s.caption_text for s in scenes] + ["a caption for a broken image"],
            "image": [s.encode("png") for s in scenes] + [b"not an image"],
        }
    )
    op = ClipScore(ClipScoreParams(model="tiny-synth", precision="fp32", embeddings=True))
    out = op.process(batch)
    img, txt = embeddings_of(out, "image_embedding"), embeddings_of(out, "text_embedding")
    assert out.column("image_embedding").type.value_type == pa.float16()
    assert img.shape == txt.shape and img.shape[0] == 4 and img.shape[1] > 1
    scores = np.asarray(out.column("clip_score").to_numpy(zero_copy_only=False))
    assert np.allclose((img[:3] * txt[:3]).sum(axis=1), scores[:3], atol=5e-3)  # cosine of unit vectors
    assert out.column("clip_score_status").to_pylist()[3] != "ok"
    assert np.isnan(scores[3]) and np.isnan(img[3]).all() and np.isnan(txt[3]).all()
    without = ClipScore(ClipScoreParams(model="tiny-synth", precision="fp32")).process(batch)
    assert "image_embedding" not in without.column_names

    recipe = f"""\
source: {{input: "{small_pool}"}}
steps:
  - op: clip_score
    model: tiny-synth
    embeddings: true
  - op: semantic_dedup
sink: {{out: "{tmp_path / "run"}"}}
"""
    result = run_recipe(load_recipe("r.yaml", text=recipe))
    steps = {s.op: s for s in result.steps}
    assert result.rows == 300 and steps["semantic_dedup"].saw == 300
    assert steps["semantic_dedup"].kept == result.kept <= 300


class _Declares(Operator):
    """A plugin-style step that declares a column; `write` says whether it really writes it."""

    name = "declares"

    def __init__(self, write: bool = True, fail: bool = False) -> None:
        super().__init__()
        self.write, self.fail = write, fail

    def provides(self) -> tuple[str, ...]:
        return ("made_up",)

    def process(self, batch: pa.Table) -> pa.Table:
        if self.fail:
            raise ValueError("boom")
        return batch.append_column("made_up", pa.array([1.0] * batch.num_rows)) if self.write else batch


def test_a_step_is_held_to_what_it_declares_and_failures_name_the_step_and_shard() -> None:
    batch = pa.table({"uid": ["a", "b"]})
    assert run_step(_Declares(), batch, 3, "s7").column("made_up").to_pylist() == [1.0, 1.0]
    with pytest.raises(StepError, match=r"step 3 \(declares\) did not write .* declares: made_up"):
        run_step(_Declares(write=False), batch, 3, "s7")
    assert run_step(_Declares(write=False), batch.slice(0, 0), 3, "s7").num_rows == 0  # nothing to write
    with pytest.raises(StepError, match=r"step 3 \(declares\) failed on shard s7: ValueError: boom"):
        run_step(_Declares(fail=True), batch, 3, "s7")


def test_cli_run_reports_a_failing_step_in_one_line(small_pool: Path, tmp_path: Path) -> None:
    """A step that fails at run time (here a head whose input size is not the embeddings') is one
    line naming the step and the shard, exit 2, no traceback."""
    np.savez(tmp_path / "head.npz", **{"0.weight": np.ones((1, 3)), "0.bias": np.zeros(1)})
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"""\
source: {{input: "{small_pool}"}}
steps:
  - op: clip_score
    model: tiny-synth
    embeddings: true
  - op: linear_head
    weights: "{tmp_path / "head.npz"}"
    column: aesthetic
sink: {{out: "{tmp_path / "run"}"}}
"""
    )
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == 2, r.output
    assert "step 2 (linear_head) failed on shard" in r.output and "expects 3-d input" in r.output
    assert "Traceback" not in r.output


def test_sink_write_shards_reshards_exactly_the_kept_pairs(small_pool: Path, tmp_path: Path) -> None:
    from vlcurate.io.sources import open_source
    from vlcurate.io.subset import array_to_uids

    text = _recipe(small_pool, tmp_path / "run").replace(
        f'sink: {{out: "{tmp_path / "run"}"}}',
        f'sink: {{out: "{tmp_path / "run"}", write_shards: true, samples_per_shard: 40}}',
    )
    result = run_recipe(load_recipe("r.yaml", text=text))
    assert result.shards is not None and result.shards["samples"] == result.kept == 150
    tars = sorted((tmp_path / "run" / "shards").glob("*.tar"))
    assert len(tars) == 4 == result.shards["shards"]  # 150 pairs, 40 a shard
    src = open_source([str(t) for t in tars])
    samples = [s for sh in src.shards() for s in src.iter_samples(sh)]
    assert sorted(s.uid for s in samples) == sorted(
        array_to_uids(read_subset(tmp_path / "run" / "subset.npy"))
    )
    assert all(s.image and s.text for s in samples)
    # a changed selection re-run into the same folder leaves no shard of the old one
    again = run_recipe(load_recipe("r.yaml", text=text.replace("fraction: 0.5", "fraction: 0.1")))
    assert again.shards is not None and again.shards["samples"] == again.kept == 30
    assert len(list((tmp_path / "run" / "shards").glob("*.tar"))) == 1
