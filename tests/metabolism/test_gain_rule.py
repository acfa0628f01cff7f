"""`loop --require-gain`: an increment that regresses nothing but gains nothing is rejected; a closed
planned weakness or a category improved beyond its interval is a gain; a regression still rejects."""

from __future__ import annotations

from pathlib import Path

from tests.evals.test_paired import runs
from typer.testing import CliRunner

from vlcurate.cli.main import app
from vlcurate.evals.paired import compare_runs
from vlcurate.metabolism.loop import LoopConfig, apply_gain_rule

OPEN = [{"weakness": "w01", "label": "colour=red", "closed": False}]
CLOSED = [{"weakness": "w01", "label": "colour=red", "closed": True}]


def test_no_change_passes_no_regression_but_not_the_gain_rule(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (30, 2, 2, 6), "count": (30, 1, 1, 8)})
    plain = compare_runs(base, new)
    assert plain.accepted  # nothing regressed: the plain rule accepts a change that did nothing
    ruled = apply_gain_rule(plain, OPEN)
    assert (
        not ruled.accepted and "no gain" in ruled.reasons[-1] and "1 planned weaknesses" in ruled.reasons[-1]
    )
    assert plain.accepted and "no gain" not in " ".join(plain.reasons)  # the original is not changed
    assert apply_gain_rule(plain, []).accepted is False


def test_a_closed_weakness_or_an_improved_category_is_a_gain(tmp_path: Path) -> None:
    base, new = runs(tmp_path / "a", {"colour": (30, 2, 2, 6), "count": (30, 1, 1, 8)})
    closed = apply_gain_rule(compare_runs(base, new), CLOSED)
    assert closed.accepted and closed.reasons[-1] == "gain: closed w01 colour=red"
    base, new = runs(tmp_path / "b", {"colour": (20, 0, 18, 2), "count": (30, 1, 1, 8)})
    better = apply_gain_rule(compare_runs(base, new), OPEN)
    assert better.accepted and "improved colour" in better.reasons[-1]


def test_a_regression_is_still_rejected_whatever_the_gain(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (20, 0, 18, 2), "count": (10, 18, 0, 2)})
    d = apply_gain_rule(compare_runs(base, new), CLOSED)
    assert not d.accepted and any("count regressed" in r for r in d.reasons)


def test_the_option_reaches_the_loop() -> None:
    assert LoopConfig(bench="b", endpoint="http://x", store=Path("s"), out=Path("o")).require_gain is False
    out = CliRunner().invoke(app, ["loop", "--help"], terminal_width=200).output
    assert "--require-gain" in out
