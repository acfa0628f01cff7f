"""`vlcurate recaption` end to end against the real tiny-synth VLM server over HTTP."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tests.platform_live import free_port
from tests.vlm_live import VLMServer
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.recaption import RecaptionConfig, recaption_dataset
from vlcurate.synth.pool import write_pool
from vlcurate.synth.recaption_eval import evaluate_pool
from vlcurate.vlm.client import VLMSettings

SEED = 5


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pool")
    write_pool(out, 24, corrupt_fraction=0.5, seed=SEED, shard_size=12)
    return out


@pytest.fixture(scope="module")
def vlm() -> Iterator[VLMServer]:
    with VLMServer() as server:
        yield server


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One response cache for the module: the same questions are answered once."""
    return tmp_path_factory.mktemp("vlm-cache")


def _cfg(base_url: str, cache: Path | None, **kw: object) -> RecaptionConfig:
    settings = VLMSettings(
        base_url=base_url, cache_dir=str(cache) if cache else None, max_retries=1, timeout_s=20
    )
    return RecaptionConfig.model_validate({"vlm": settings, "progress": False, "k": 3, "rounds": 2, **kw})


def _rows(out: Path) -> list[dict[str, object]]:
    tables = [pq.read_table(p) for p in sorted((out / "captions").glob("*.parquet"))]
    return pa.concat_tables(tables).to_pylist()


@pytest.mark.slow
def test_fixes_corrupted_captions_and_never_makes_a_correct_one_false(
    pool: Path, vlm: VLMServer, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    summary = recaption_dataset(str(pool / "shards"), out, _cfg(vlm.base_url, cache))
    rows = _rows(out)
    assert sorted(r["uid"] for r in rows) == sorted(pq.read_table(pool / "truth.parquet")["uid"].to_pylist())
    assert {r["status"] for r in rows} <= {"ok", "no_caption"}
    for r in rows:
        assert r["candidates"], r
        assert {c["origin"] for c in r["candidates"]} <= {"sample", "fuse", "rewrite"}
        if r["chosen_origin"] == "original":
            assert r["chosen"] == r["original"] and r["why"].startswith("kept original")
        else:
            assert r["chosen_score"] > r["original_score"] + 0.12
    quality = evaluate_pool(pool, out, SEED)
    assert quality["correct_made_false"] == 0, quality["made_false_examples"]
    assert quality["corrupted_fixed"] >= 3, quality  # measured ~50% of corrupted captions fixed
    assert summary["mean_score_after"] > summary["mean_score_before"]
    assert summary["shards_done"] == 2 and not summary["incomplete_shards"]
    assert (out / "scores_before_after.png").stat().st_size > 1000
    assert summary["this_run"]["requests"] >= 2 * len(rows)  # a sample and a fuse or rewrite per pair
    # A re-run finds every shard done: no request, same tables.
    again = recaption_dataset(str(pool / "shards"), out, _cfg(vlm.base_url, cache))
    assert again["this_run"]["requests"] == 0 and again["pairs"] == len(rows)


def test_a_spent_budget_leaves_the_shard_to_the_next_run(
    pool: Path, vlm: VLMServer, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    first = recaption_dataset(str(pool / "shards"), out, _cfg(vlm.base_url, cache, budget_requests=8))
    assert first["this_run"]["requests"] <= 8 and first["this_run"]["budget_spent"]
    assert first["counts_by_status"].get("budget", 0) > 0 and first["incomplete_shards"]
    budget_rows = [r for r in _rows(out) if r["status"] == "budget"]
    assert all(
        r["chosen"] == r["original"] and r["why"] == "kept original: request budget spent"
        for r in budget_rows
    )
    second = recaption_dataset(str(pool / "shards"), out, _cfg(vlm.base_url, cache))
    assert second["shards_done"] == 2 and not second["incomplete_shards"]
    assert second["this_run"]["cached"] > 0  # answers given before came from the cache
    rows = _rows(out)
    assert len(rows) == 24 and len({r["uid"] for r in rows}) == 24
    assert {r["status"] for r in rows} <= {"ok", "no_caption"}


def test_a_server_that_is_gone_costs_no_pair_and_a_rerun_completes(
    pool: Path, vlm: VLMServer, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    dead = f"http://127.0.0.1:{free_port()}/v1"
    cfg = RecaptionConfig(
        vlm=VLMSettings(base_url=dead, max_retries=0, timeout_s=2), progress=False, rounds=1
    )
    gone = recaption_dataset(str(pool / "shards"), out, cfg)
    rows = _rows(out)
    assert len(rows) == 24 and {r["status"] for r in rows} == {"vlm_error"}
    assert all(r["chosen"] == r["original"] and r["error"].startswith("sample:") for r in rows)
    assert gone["shards_done"] == 0 and len(gone["incomplete_shards"]) == 2
    back = recaption_dataset(str(pool / "shards"), out, _cfg(vlm.base_url, cache))
    assert back["shards_done"] == 2 and {r["status"] for r in _rows(out)} <= {"ok", "no_caption"}


def test_images_the_server_rejects_are_recorded_errors(pool: Path, tmp_path: Path) -> None:
    """No cache here: every question must reach this stricter server."""
    with VLMServer(["--max-image-bytes", "1024", "--faults", "empty=0.3"]) as picky:
        summary = recaption_dataset(
            str(pool / "shards"), tmp_path / "run", _cfg(picky.base_url, None, k=2, rounds=1)
        )
    rows = _rows(tmp_path / "run")
    assert len(rows) == 24
    rejected = [r for r in rows if r["status"] == "vlm_error"]
    assert rejected and all("sample:" in r["error"] and r["chosen"] == r["original"] for r in rejected)
    assert any(r["status"] in ("ok", "partial") for r in rows)  # small images still went through
    assert summary["incomplete_shards"]  # the rejected pairs are retried by the next run


def test_cli_runs_and_prints_the_distribution(
    pool: Path, vlm: VLMServer, cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cli"
    shard = str(pool / "shards" / "00000000.tar")
    res = CliRunner().invoke(
        app,
        [
            "recaption",
            shard,
            "--out",
            str(out),
            "--vlm-url",
            vlm.base_url,
            "--k",
            "3",
            "--rounds",
            "2",
            "--cache-dir",
            str(cache),
            "-q",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "mean score" in res.output and "score q50" in res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["pairs"] == 12 and summary["this_run"]["cached"] > 0
    bad = CliRunner().invoke(app, ["recaption", shard, "--out", str(out), "--style", "poem"])
    assert bad.exit_code == 2 and "style" in bad.output
    missing = CliRunner().invoke(app, ["recaption", str(tmp_path / "nope.tar"), "--out", str(out)])
    assert missing.exit_code == 2 and "error" in missing.output
