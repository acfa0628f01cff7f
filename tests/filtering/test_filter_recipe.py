"""`vlcurate filter` is a recipe over score tables: the same operators in `vlcurate run` (either engine)
give the same subset, `datacomp_basic` reads sizes from columns or image headers, and the exact cut is
the same whichever way it is found."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filter_tables import hex_uids, write_scores
from PIL import Image
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.io.sources import open_source
from vlcurate.io.subset import read_subset
from vlcurate.ops.base import REASONS, mark
from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import RecipeError, load_recipe
from vlcurate.ops.rule_ops import DatacompBasic
from vlcurate.ops.score_filter import filter_recipe, run_filter
from vlcurate.ops.score_filter_config import FilterConfig


def _scores(tmp: Path, n: int = 600, shards: int = 3) -> Path:
    """A score run: rounded scores (ties), failed statuses, an out-of-range score, short captions,
    small and stretched images."""
    rng = np.random.default_rng(7)
    for s in range(shards):
        uids = [f"{s:02x}{u[2:]}" for u in hex_uids(n, seed=s + 11).to_pylist()]
        sc = np.round(rng.uniform(-0.2, 0.5, n), 2)
        sc[0] = 1.7  # corrupt
        status = ["ok"] * n
        status[1] = "fetch_error"
        text = [" ".join(["word"] * int(k)) for k in rng.integers(1, 6, n)]
        width = rng.integers(100, 900, n).tolist()
        height = rng.integers(100, 900, n).tolist()
        write_scores(
            tmp / "run" / "scores" / f"{s:08d}.parquet",
            uids,
            sc,
            status=status,
            text=text,
            width=width,
            height=height,
        )
    (tmp / "run" / "summary.json").write_text("{}")
    return tmp / "run"


def _recipe_text(run: Path, out: Path, bounded: bool = False) -> str:
    return (
        f"source: {{input: '{run}', kind: scores}}\n"
        "steps:\n"
        f"  - op: top_fraction\n    column: score\n    fraction: 0.3\n    bounded: {str(bounded).lower()}\n"
        "  - op: datacomp_basic\n"
        f"sink: {{out: '{out}'}}\n"
    )


def test_run_over_score_tables_is_the_filter(tmp_path: Path) -> None:
    run = _scores(tmp_path)
    res = run_filter(run, tmp_path / "f", FilterConfig(top_fraction=0.3, basic=True))
    recipe = load_recipe("r.yaml", text=_recipe_text(run, tmp_path / "r"))
    result = run_recipe(recipe)
    assert result.kept == res.kept > 0
    assert np.array_equal(read_subset(result.subset), read_subset(tmp_path / "f" / "subset.npy"))  # type: ignore[arg-type]
    dec = pq.read_table(tmp_path / "f" / "decisions.parquet").to_pylist()
    by_uid = {r["uid"]: r for r in dec}
    first = [r for r in dec if r["shard"] == "00000000"]
    assert first[0]["reason"] == "invalid_score" and first[0]["reasons"][0] == "invalid_score"
    assert first[1]["reason"] == "status:fetch_error" and not first[1]["keep"]
    # every failing rule is listed, the cut first (the pool mode), on rows dropped earlier too
    for r in by_uid.values():
        assert r["keep"] == (r["reason"] == "") and (r["reasons"][:1] == [r["reason"]] or r["keep"])
    several = [r for r in dec if len(r["reasons"]) >= 2]
    assert several and all(r["reasons"][0] == r["reason"] for r in several)
    report = json.loads((tmp_path / "f" / "report.json").read_text())
    assert report["kept"] == res.kept and report["counts_by_rule"]["status:fetch_error"] == 3


def test_the_bounded_cut_and_the_in_memory_cut_agree_through_the_engine(tmp_path: Path) -> None:
    run = _scores(tmp_path)
    mem = run_recipe(load_recipe("a.yaml", text=_recipe_text(run, tmp_path / "a")))
    bnd = run_recipe(load_recipe("b.yaml", text=_recipe_text(run, tmp_path / "b", bounded=True)))
    assert np.array_equal(read_subset(mem.subset), read_subset(bnd.subset))  # type: ignore[arg-type]
    # how the cut is found is not part of what it is: the bounded recipe reuses nothing it need not
    assert mem.kept == bnd.kept


def test_the_ray_engine_runs_the_filter_recipe_the_same(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    from vlcurate.ops.engine_ray import run_recipe_ray

    run = _scores(tmp_path)
    cfg = FilterConfig(top_fraction=0.3, basic=True, fraction_of="after-rules")
    local = run_recipe(filter_recipe([str(run)], tmp_path / "l", cfg, "score"))
    ray_res = run_recipe_ray(
        filter_recipe([str(run)], tmp_path / "y", cfg, "score"), num_cpus=2, progress=False
    )
    assert ray_res.kept == local.kept
    assert np.array_equal(read_subset(ray_res.subset), read_subset(local.subset))  # type: ignore[arg-type]


def test_a_big_score_file_is_cut_into_row_ranges_that_read_every_row_once(tmp_path: Path) -> None:
    uids = hex_uids(1000, seed=3)
    write_scores(tmp_path / "one.parquet", uids, np.linspace(-1, 1, 1000), row_group_size=128)
    src = open_source(str(tmp_path / "one.parquet"), kind="scores", rows_per_shard=300)
    shards = src.shards()
    assert [sh.name for sh in shards][:2] == ["one-r000000000-000000300", "one-r000000300-000000600"]
    read = [u for sh in shards for t in src.iter_tables(sh) for u in t.column("uid").to_pylist()]  # type: ignore[attr-defined]
    assert read == uids.to_pylist()
    with pytest.raises(ValueError, match="unknown option"):
        open_source(str(tmp_path / "one.parquet"), kind="scores", image_column="x")


def test_datacomp_basic_reads_sizes_from_image_headers_when_there_are_no_size_columns() -> None:
    def jpeg(w: int, h: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (w, h)).save(buf, "JPEG")
        return buf.getvalue()

    batch = pa.table(
        {
            "uid": ["a", "b", "c", "d"],
            "text": ["a dog on a beach", "a dog", None, "two cats on a sofa"],
            "image": [jpeg(300, 240), jpeg(300, 240), jpeg(150, 400), b"not an image"],
        }
    )
    out = DatacompBasic().process(batch).to_pylist()
    assert [r["keep"] for r in out] == [True, False, False, False]
    assert out[1]["reason"] == "words<3"
    assert out[2]["reason"] == "missing:text"
    assert out[3]["reason"] == "missing:size"
    # with a `reasons` column every failing rule is listed
    listed = DatacompBasic().process(batch.append_column(REASONS, pa.array([[]] * 4, pa.list_(pa.string()))))
    assert listed.column(REASONS).to_pylist()[2] == ["missing:text", "min_side<200"]


def test_mark_appends_to_reasons_only_where_the_check_could_judge() -> None:
    t = pa.table({"uid": ["a", "b", "c"], "reasons": pa.array([["x"], [], []], pa.list_(pa.string()))})
    out = mark(t, np.array([False, False, True]), ["r1", "r2", None], listed=np.array([False, True, True]))
    assert out.column("reasons").to_pylist() == [["x"], ["r2"], []]
    assert out.column("reason").to_pylist() == ["r1", "r2", None]
    again = mark(out, np.array([False, True, False]), "r3")
    assert again.column("reason").to_pylist() == ["r1", "r2", "r3"]  # the first reason stays
    assert again.column("reasons").to_pylist() == [["x", "r3"], ["r2"], ["r3"]]


def test_a_scores_recipe_checks_its_columns_and_the_cli_runs_it(tmp_path: Path) -> None:
    run = _scores(tmp_path, n=100, shards=1)
    with pytest.raises(RecipeError, match="needs column"):
        src = f"source: {{input: '{run}', kind: scores}}\n"
        load_recipe("x.yaml", text=src + "steps:\n  - op: image_quality\nsink: {out: x}\n")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(_recipe_text(run, tmp_path / "out"))
    r = CliRunner().invoke(app, ["run", str(recipe)])
    assert r.exit_code == 0, r.output
    assert "pairs kept" in r.stdout
