"""`vlcurate filter` through typer's CliRunner: the happy path and every bad input (exit 2, one line)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from filter_tables import hex_uids, write_datacomp, write_scores
from typer.testing import CliRunner

from vlcurate.cli.main import app

runner = CliRunner()


@pytest.fixture
def scores_file(tmp_path: Path) -> Path:
    uids = hex_uids(40, seed=3).to_pylist()
    return write_scores(tmp_path / "s.parquet", uids, np.linspace(-0.2, 0.58, 40))


def _bad(args: list[str], *needles: str) -> str:
    res = runner.invoke(app, ["filter", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    err = res.stderr.strip()
    assert err.startswith("Error: ") and len(err.splitlines()) == 1, err
    for n in needles:
        assert n in err, err
    return err


def test_cli_happy_path(scores_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    res = runner.invoke(
        app, ["filter", str(scores_file), "--out", str(out), "--top-fraction", "0.25", "--basic"]
    )
    assert res.exit_code == 0, res.output
    assert "kept" in res.stdout and "not applied" in res.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["kept"] == 10 and report["selection"]["target_k"] == 10
    for name in ("subset.npy", "decisions.parquet", "report.json", "report.md", "score_hist.png"):
        assert (out / name).exists()


def test_cli_help_states_language_check_not_applied() -> None:
    res = runner.invoke(app, ["filter", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    text = " ".join(res.stdout.replace("│", " ").split())
    assert "English language check is NOT applied" in text


def test_missing_scores_path(tmp_path: Path) -> None:
    _bad([str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--threshold", "0.2"], "not found", "nope")


def test_no_score_column_lists_columns(tmp_path: Path) -> None:
    pq.write_table(pa.table({"uid": ["0" * 32], "status": ["ok"], "sim": [0.3]}), tmp_path / "t.parquet")
    _bad(
        [str(tmp_path / "t.parquet"), "--out", str(tmp_path / "o"), "--threshold", "0.2"], "uid, status, sim"
    )
    _bad(
        [
            str(tmp_path / "t.parquet"),
            "--out",
            str(tmp_path / "o"),
            "--threshold",
            "0.2",
            "--score-column",
            "x",
        ],
        "'x'",
    )


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        (["--threshold", "0.2", "--top-fraction", "0.3"], "exactly one of --threshold or --top-fraction"),
        ([], "exactly one of --threshold or --top-fraction"),
        (["--top-fraction", "0"], "--top-fraction"),
        (["--top-fraction", "1.5"], "--top-fraction"),
        (["--top-fraction", "-0.1"], "--top-fraction"),
        (["--threshold", "1.01"], "--threshold"),
        (["--threshold", "-2"], "--threshold"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "0.1", "--max-aspect", "0.5"], "--max-aspect"),
    ],
)
def test_bad_options(scores_file: Path, tmp_path: Path, flags: list[str], needle: str) -> None:
    _bad([str(scores_file), "--out", str(tmp_path / "o"), *flags], needle)
    assert not (tmp_path / "o").exists()


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "bad.parquet").write_bytes(b"this is not parquet at all")
    _bad(
        [str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "o"), "--threshold", "0"],
        "not a readable Parquet",
    )


def test_truncated_parquet(scores_file: Path, tmp_path: Path) -> None:
    data = scores_file.read_bytes()
    (tmp_path / "trunc.parquet").write_bytes(data[: len(data) // 2])
    _bad([str(tmp_path / "trunc.parquet"), "--out", str(tmp_path / "o"), "--threshold", "0"], "trunc.parquet")


def test_bad_uid_in_datacomp_metadata(tmp_path: Path) -> None:
    uids = hex_uids(3, seed=4).to_pylist()
    uids[1] = "not-a-uid"
    write_datacomp(tmp_path / "m.parquet", uids, [0.3, 0.2, 0.1], [0.3, 0.2, 0.1])
    _bad([str(tmp_path / "m.parquet"), "--out", str(tmp_path / "o"), "--top-fraction", "0.5"], "'not-a-uid'")


def test_out_dir_not_empty(scores_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("x")
    _bad([str(scores_file), "--out", str(out), "--threshold", "0"], "--overwrite")
    res = runner.invoke(
        app, ["filter", str(scores_file), "--out", str(out), "--threshold", "0", "--overwrite"]
    )
    assert res.exit_code == 0, res.output


def test_nan_and_out_of_range_scores_are_dropped_not_kept(tmp_path: Path) -> None:
    uids = hex_uids(4, seed=6).to_pylist()
    write_scores(tmp_path / "s.parquet", uids, [0.5, float("nan"), 3.0, -7.0])
    res = runner.invoke(
        app, ["filter", str(tmp_path / "s.parquet"), "--out", str(tmp_path / "o"), "--threshold", "-1"]
    )
    assert res.exit_code == 0, res.output
    assert "invalid_score" in res.stdout
    dec = pq.read_table(tmp_path / "o" / "decisions.parquet").to_pylist()
    assert [r["reason"] for r in dec] == ["", "invalid_score", "invalid_score", "invalid_score"]
    assert np.load(tmp_path / "o" / "subset.npy").shape == (1,)


def test_empty_table_says_so(tmp_path: Path) -> None:
    write_scores(tmp_path / "e.parquet", [], [])
    res = runner.invoke(
        app, ["filter", str(tmp_path / "e.parquet"), "--out", str(tmp_path / "o"), "--top-fraction", "0.3"]
    )
    assert res.exit_code == 0, res.output
    assert "no rows" in res.stdout and "empty subset" in res.stdout
    assert np.load(tmp_path / "o" / "subset.npy").shape == (0,)
