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


# ---- issue 14: exit status over incomplete score runs, and the language note -------------------


def test_note_points_to_the_language_operator(scores_file: Path, tmp_path: Path) -> None:
    res = runner.invoke(
        app,
        ["filter", str(scores_file), "--out", str(tmp_path / "o"), "--threshold", "0"],
        env={"COLUMNS": "300"},
    )
    assert res.exit_code == 0, res.output
    assert "arrives with the curation operators" not in res.stdout
    assert "`language` operator of `vlcurate run`" in res.stdout
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert "`language` operator" in report["rules"]["language_note"]
    assert "arrives with" not in (tmp_path / "o" / "report.md").read_text()
    helped = runner.invoke(app, ["filter", "--help"], env={"COLUMNS": "200"})
    text = " ".join(helped.stdout.replace("│", " ").split())
    assert "arrives with the curation operators" not in text and "`language` operator" in text


def test_a_complete_score_run_exits_0(score_run, tmp_path: Path) -> None:
    run, _, _ = score_run(n_shards=2, per_shard=20)
    (run / "summary.json").write_text(
        json.dumps({"shards_total": 2, "shards_missing": [], "partial_shards": []})
    )
    res = runner.invoke(app, ["filter", str(run), "--out", str(tmp_path / "o"), "--top-fraction", "0.5"])
    assert res.exit_code == 0, res.output


def test_a_score_run_with_failed_shards_exits_partial(
    coco_pairs: list, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A real `vlcurate score` run with one good shard, one that is not a tar, one truncated."""
    from tests.score.shards import write_coco_shards

    from vlcurate.cli.errors import EXIT_PARTIAL
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    shards = tmp_path / "shards"
    write_coco_shards(shards, coco_pairs, n_shards=1, per_shard=8)
    (shards / "00000001.tar").write_bytes(b"not a tar" * 100)
    full = (shards / "00000000.tar").read_bytes()
    (shards / "00000002.tar").write_bytes(full[: int(len(full) * 0.6)])
    cfg = ScoreConfig(model=f"local-dir:{tiny_model_dir}", workers=0, progress=False)
    score_dataset(str(shards), tmp_path / "run", cfg)
    out = tmp_path / "o"
    res = runner.invoke(
        app, ["filter", str(tmp_path / "run"), "--out", str(out), "--threshold", "-1"], env={"COLUMNS": "400"}
    )
    assert res.exit_code == EXIT_PARTIAL, res.output
    assert "Traceback" not in res.output
    assert "did not finish 1 of 3 shards (00000001)" in res.stdout
    assert "only in part (00000002)" in res.stdout
    assert f"exit status {EXIT_PARTIAL}" in res.stderr
    report = json.loads((out / "report.json").read_text())  # the outputs are written all the same
    assert len(report["inputs"]["problems"]) == 2 and report["kept"] > 8
    assert np.load(out / "subset.npy").shape == (report["subset_size"],)
