"""`vlcurate demo` runs the whole job offline and removes mostly the corrupted captions."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from vlcurate.cli.main import app

runner = CliRunner()


def test_demo_end_to_end_grades_removal_against_truth(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    r = runner.invoke(app, ["demo", "--out", str(out), "--n", "600", "--quiet"], env={"COLUMNS": "160"})
    assert r.exit_code == 0, r.output
    assert "precision" in r.output and "recall" in r.output
    report = json.loads((out / "demo_report.json").read_text())
    assert report["pairs"] == 600 and report["corrupted"] == 180 and report["removed"] == 180
    # tiny-synth separates wrong captions well: most removals are corrupted ones
    assert report["precision"] >= 0.7, report
    assert report["recall_by_kind"]["unrelated"] >= 0.9 and report["recall_by_kind"]["wrong_colour"] >= 0.9
    assert (out / "filter" / "subset.npy").exists() and (out / "filter" / "score_hist.png").exists()
    assert len(list((out / "kept-shards").glob("*.tar"))) >= 1


def test_demo_rejects_bad_arguments(tmp_path: Path) -> None:
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--corrupt-fraction", "1.5"])
    assert r.exit_code == 2 and "corrupt-fraction" in r.output
    r = runner.invoke(app, ["demo", "--out", str(tmp_path / "d"), "--n", "3"])
    assert r.exit_code == 2 and "--n" in r.output
