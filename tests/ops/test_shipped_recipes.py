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


def _offline(path: Path, tmp: Path, pool: Path, instruct: Path, vlm_url: str, targets: Path) -> str:
    """A shipped recipe on local test data: tiny-synth for every model, few clusters, the test VLM,
    and a minimum image side the 64-pixel synthetic images meet."""
    text = path.read_text()
    for model in ("openai-l14", "dfn-b16"):
        text = text.replace(f"model: {model}", "model: tiny-synth")
    text = text.replace("n_clusters: 100000", "n_clusters: 8").replace("min_side: 200", "min_side: 64")
    text = text.replace("targets: imagenet_train_l14_embeddings.npy", f"targets: {targets}")
    text = text.replace("http://127.0.0.1:8300/v1", vlm_url)
    text = text.replace('"shards/{00000000..00000099}.tar"', f'"{pool}"').replace(
        "input: pool/shards", f"input: {pool}"
    )
    text = text.replace("input: instruct/data.json", f"input: {instruct / 'data.json'}")
    return text.replace("out: runs/", f"out: {tmp}/")


@pytest.mark.slow
def test_both_engines_keep_the_same_pairs_for_every_shipped_recipe(
    small_pool: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Every recipe in recipes/, offline (tiny-synth for its models), on the local and the Ray engine:
    the same kept set, the same decisions, the same per-step counts."""
    ray = pytest.importorskip("ray")
    import numpy as np
    from tests.vlm_live import VLMServer

    from vlcurate.io.subset import read_subset
    from vlcurate.models.loader import load_scorer
    from vlcurate.ops.engine_ray import run_recipe_ray
    from vlcurate.synth.instruct_data import write_planted

    tmp = tmp_path_factory.mktemp("shipped")
    instruct = tmp / "instruct"
    write_planted(instruct, 60, seed=3, fault_rate=0.5)
    dim = load_scorer("tiny-synth", precision="fp32").embed_dim
    targets = tmp / "targets.npy"
    np.save(targets, np.random.default_rng(0).normal(size=(5, dim)).astype(np.float32))
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True)
    try:
        with VLMServer() as vlm:
            for path in RECIPES:

                def text(engine: str, path: Path = path) -> str:
                    return _offline(path, tmp / engine, small_pool, instruct, vlm.base_url, targets)

                local = run_recipe(load_recipe(path.name, text=text("local")))
                remote = run_recipe_ray(load_recipe(path.name, text=text("ray")), progress=False)
                assert (remote.rows, remote.kept) == (local.rows, local.kept), path.stem
                assert 0 < local.kept <= local.rows, path.stem
                assert np.array_equal(read_subset(remote.subset), read_subset(local.subset)), path.stem  # type: ignore[arg-type]
                counts = [(s.op, s.saw, s.kept, s.dropped) for s in local.steps]
                assert [(s.op, s.saw, s.kept, s.dropped) for s in remote.steps] == counts, path.stem
                for f in sorted((local.out / "decisions").glob("*.parquet")):
                    ours, ref = pq.read_table(remote.out / "decisions" / f.name), pq.read_table(f)
                    cols = ["uid", "keep", "reason", "dropped_by"]
                    assert ours.select(cols).to_pylist() == ref.select(cols).to_pylist(), (path.stem, f.name)
    finally:
        ray.shutdown()
