"""Every recipe in recipes/ validates, and the offline one runs and removes corrupted captions."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from vlcurate.ops.engine_local import run_recipe
from vlcurate.ops.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_are_shipped() -> None:
    names = {p.stem for p in RECIPES}
    assert {
        "datacomp_basic",
        "datacomp_clip_l14_top30",
        "datacomp_text_based",
        "datacomp_image_based",
        "datacomp_image_based_clip_top30",
        "dfn_top_fraction",
        "synth_demo",
    } <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_shipped_recipe_validates(path: Path) -> None:
    assert load_recipe(path).steps


def test_the_offline_recipe_drops_mostly_corrupted_captions(small_pool: Path, tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2] / "recipes" / "synth_demo.yaml").read_text()
    text = text.replace("input: pool/shards", f"input: {small_pool}").replace(
        "out: runs/synth_demo", f"out: {tmp_path}"
    )
    result = run_recipe(load_recipe("synth_demo.yaml", text=text))
    assert result.rows == 300 and 200 <= result.kept <= 215
    truth = pq.read_table(small_pool.parent / "truth.parquet").to_pylist()
    corrupted = {r["uid"] for r in truth if r["corrupted"]}
    dropped = {
        r["uid"]
        for f in (tmp_path / "decisions").glob("*.parquet")
        for r in pq.read_table(f).to_pylist()
        if not r["keep"]
    }
    assert len(dropped & corrupted) / len(dropped) >= 0.8  # what is dropped is mostly what was corrupted
