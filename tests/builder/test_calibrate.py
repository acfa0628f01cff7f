"""ALR corrected for the verifier's own error, measured on trusted labels (never the synthetic truth)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from tests.builder.conftest import ALL_SHAPES, labelled_scenes, true_class, write_scene_pool

from vlcurate.base.intervals import wilson
from vlcurate.builder.calibrate import Calibration, corrected_alr, label_correct, measure, reported_alr
from vlcurate.builder.formats import Ann, Dataset, write_dataset
from vlcurate.builder.job import BuildConfig, build
from vlcurate.builder.label import Label
from vlcurate.synth.vocab import SHAPES


def test_the_correction_recovers_the_accuracy_a_biased_verifier_hides() -> None:
    # a verifier that confirms 95% of correct labels and 30% of wrong ones, on labels 90% correct
    rng = np.random.default_rng(3)
    n, a, s, f = 4000, 0.9, 0.95, 0.3
    correct = rng.random(n) < a
    confirmed = int(np.where(correct, rng.random(n) < s, rng.random(n) < f).sum())
    raw = confirmed / n
    assert raw < a - 0.01  # what a plain confirmed share would report
    cal = Calibration("trusted", 600, 540, round(540 * s), 60, round(60 * f))
    out = corrected_alr(confirmed, n, cal)
    assert abs(out["alr"] - a) < 0.02 and out["ci95"][0] <= a <= out["ci95"][1]
    lo, hi = wilson(confirmed, n)
    assert out["ci95"][1] - out["ci95"][0] > hi - lo  # the verifier's own uncertainty widens it
    # a bigger trusted sample narrows it again
    big = corrected_alr(confirmed, n, Calibration("t", 6000, 5400, round(5400 * s), 600, round(600 * f)))
    assert big["ci95"][1] - big["ci95"][0] < out["ci95"][1] - out["ci95"][0]


def test_a_class_below_the_bar_only_by_its_raw_share_is_not_sent_back() -> None:
    """The verifier confirms 90% of right labels and 30% of wrong ones: a class with 80% confirmed
    is (0.8 - 0.3) / (0.9 - 0.3) = 83% right, above a 0.82 bar its raw share would miss."""
    cal = Calibration("t", 200, 100, 90, 100, 30)
    raw = {"alr": 0.8, "ci95": [0.71, 0.87], "checked": 100, "confirmed": 80}

    def class_alr(raw: dict[str, Any], cal: Calibration | None) -> float | None:
        return reported_alr(raw, cal, True)["alr"]  # what the back-to-collection rule compares

    assert class_alr(raw, None) == 0.8
    assert abs((class_alr(raw, cal) or 0) - 0.8333) < 0.001
    none_wrong = Calibration("t", 50, 50, 48, 0, 0)  # nothing measurable: the raw share stands
    unchecked = {"alr": None, "ci95": [0.0, 1.0], "checked": 0, "confirmed": 0}
    assert class_alr(raw, none_wrong) == 0.8 and class_alr(unchecked, cal) is None


def test_no_measurable_error_leaves_alr_uncalibrated_and_says_why() -> None:
    none_wrong = corrected_alr(90, 100, Calibration("t", 50, 50, 48, 0, 0))
    assert none_wrong["alr"] is None and "no mistake" in none_wrong["why_not"]
    useless = corrected_alr(90, 100, Calibration("t", 50, 40, 20, 10, 6))
    assert useless["alr"] is None and "tells nothing" in useless["why_not"]


def test_labels_are_judged_against_trusted_boxes_and_classes() -> None:
    truth = [Ann("star", (10, 10, 30, 30)), Ann("circle", (40, 40, 60, 60))]
    assert label_correct(Label("star", 0.9, "m", box=(11, 11, 30, 31)), truth)
    assert not label_correct(Label("circle", 0.9, "m", box=(11, 11, 30, 31)), truth)
    assert not label_correct(Label("star", 0.9, "m", box=(0, 0, 12, 12)), truth)
    assert label_correct(Label("circle", 0.9, "m"), truth) and not label_correct(
        Label("cross", 0.9, "m"), truth
    )
    labs = [
        [Label("star", 0.9, "m", box=(10, 10, 30, 30), verified=True)],
        [Label("cross", 0.9, "m", box=(40, 40, 60, 60), verified=True)],
        [Label("circle", 0.9, "m", box=(40, 40, 60, 60), verified=False), Label("star", 1, "m")],
    ]
    cal = measure("t", [truth, truth, truth], labs)
    assert (cal.correct, cal.correct_confirmed, cal.wrong, cal.wrong_confirmed) == (2, 1, 1, 1)


def test_expanding_a_labelled_set_calibrates_alr_on_its_labels(tmp_path: Path) -> None:
    pool = write_scene_pool(tmp_path / "pool", 120, single=True)
    # the set being expanded: 100 labelled scenes the pool does not hold (its labels are trusted)
    items = labelled_scenes(5000, 100)
    existing = tmp_path / "existing"
    write_dataset(Dataset(list(SHAPES), items), "imagefolder", existing)
    out = tmp_path / "out"
    summary = build(BuildConfig(request=f"{ALL_SHAPES}, 8 each", pools=[str(pool)], out=out, expand=existing))
    alr = summary["metrics"]["alr"]
    assert alr["calibrated"] and alr["calibration"]["images"] == 100
    cal = alr["calibration"]
    assert cal["labels_correct"] + cal["labels_wrong"] == 100 and cal["source"] == str(existing)
    cands = [json.loads(x) for x in (out / "review" / "candidates.jsonl").read_text().splitlines()]
    truth = np.mean([r["labels"][0]["class"] == true_class(r["source"], True) for r in cands])
    # the corrected estimate brackets the truth; the raw share is kept beside it
    assert (
        alr["ci95"][0] <= truth <= alr["ci95"][1] and alr["raw"]["alr"] == alr["confirmed"] / alr["checked"]
    )
    assert "corrected for its error measured on 100 trusted images" in (out / "README.md").read_text()
    # every class corrected the same way, its raw share beside it; the corrected value is what the
    # back-to-collection rule compares with the reliability bar
    per_class = summary["metrics"]["alr_per_class"]
    assert set(per_class) == set(SHAPES)
    for c, m in per_class.items():
        if m["checked"]:
            assert m["calibrated"] and m["raw"]["alr"] == m["confirmed"] / m["checked"], c
            sens, f = m["calibration"]["sensitivity"], m["calibration"]["false_confirm_rate"]
            assert abs(m["alr"] - min(1.0, max(0.0, (m["raw"]["alr"] - f) / (sens - f)))) < 0.01, c
    stages = {s["stage"]: s for s in summary["stages"]}
    assert stages["calibrate"]["saw"] == 100 and stages["calibrate"]["calls"]["images_encoded"] >= 200


def test_a_calibration_set_that_is_not_a_dataset_is_refused_before_any_work(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    pool = write_scene_pool(tmp_path / "pool", 3, single=True)
    (tmp_path / "junk").mkdir()
    out = tmp_path / "out"
    args = ["build", "circles", "--pool", str(pool), "--out", str(out), "--calibrate", str(tmp_path / "junk")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 2 and "not a dataset folder" in r.output and "Traceback" not in r.output
    assert not out.exists()
