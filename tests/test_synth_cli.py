"""`vlcurate synth pool|scenes` through the real typer app."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.synth.rle import rle_to_mask

runner = CliRunner()


def test_pool_command_writes_pool_and_prints_summary(tmp_path: Path) -> None:
    out = tmp_path / "pool"
    result = runner.invoke(app, ["synth", "pool", str(out), "--n", "30", "--shard-size", "20", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "samples" in result.output and "30" in result.output and "wrong_colour" in result.output
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["00000000.tar", "00000001.tar"]
    stats = sorted(p.name for p in (out / "shards").glob("*_stats.json"))
    assert stats == ["00000000_stats.json", "00000001_stats.json"]
    truth = pq.read_table(out / "truth.parquet")
    assert truth.num_rows == 30 and sum(truth.column("corrupted").to_pylist()) == 9


def test_scenes_command_writes_images_masks_and_truth(tmp_path: Path) -> None:
    out = tmp_path / "scenes"
    result = runner.invoke(app, ["synth", "scenes", str(out), "--n", "3"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in (out / "scenes.jsonl").read_text().splitlines()]
    assert len(records) == 3
    for r in records:
        assert Image.open(out / r["image"]).size == (64, 64)
        assert len(r["objects"]) == r["n_objects"] == len(r["boxes"]) and r["qa"]
        assert set(r["corruptions"]) == {"wrong_colour", "wrong_count", "wrong_shape", "unrelated"}
        for obj in r["objects"]:
            mask = np.asarray(Image.open(out / obj["mask"])) > 0
            assert np.array_equal(mask, rle_to_mask(obj["mask_rle"]))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pool", "--n", "0"], "--n"),
        (["pool", "--corrupt-fraction", "1.5"], "--corrupt-fraction"),
        (["pool", "--corrupt-fraction", "-0.2"], "--corrupt-fraction"),
        (["pool", "--image-format", "gif"], "--image-format"),
        (["scenes", "--n", "-1"], "--n"),
    ],
)
def test_bad_arguments_fail_clearly(tmp_path: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["synth", args[0], str(tmp_path / "o"), *args[1:]])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "o" / "truth.parquet").exists()
