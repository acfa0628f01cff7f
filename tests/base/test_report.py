"""The shared report writer: streaming histograms (merge, bounded memory, JSON), report.json /
report.md / report.html with hostile text escaped, `vlcurate run`'s legacy call, and `vlcurate
score` writing its report end to end."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from vlcurate.base.report import Histogram, ReportData, write_report

HOSTILE = "<script>alert(1)</script>"


def _shards(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(0.3, 0.2, 5_000), rng.uniform(-3, 7, 2_000), rng.normal(40, 1, 300)]


def test_merged_shards_equal_one_pass_on_a_fixed_grid() -> None:
    shards = _shards()
    one = Histogram(-1.0, 1.0, bins=500)
    for i, v in enumerate(shards):
        one.add(v, "kept" if i % 2 == 0 else "dropped")
    merged = Histogram(-1.0, 1.0, bins=500)
    for i, v in enumerate(shards):
        part = Histogram(-1.0, 1.0, bins=500)
        part.add(v, "kept" if i % 2 == 0 else "dropped")
        merged.merge(Histogram.from_dict(json.loads(json.dumps(part.to_dict()))))  # via JSON, as markers
    assert merged.to_dict()["series"]["kept"]["counts"] == one.to_dict()["series"]["kept"]["counts"]
    assert merged.quantiles("kept") == one.quantiles("kept")
    assert merged.count() == one.count() == sum(len(v) for v in shards)
    assert merged.mean("kept") == pytest.approx(one.mean("kept"))


def test_merged_shards_equal_one_pass_on_a_found_range() -> None:
    shards = _shards(1)
    one = Histogram(bins=1024)
    one.add(np.concatenate(shards), "x")
    merged = Histogram(bins=1024)
    for v in reversed(shards):  # another order, other first ranges
        part = Histogram(bins=1024)
        part.add(v, "x")
        merged.merge(part)
    assert merged.count("x") == one.count("x")
    assert merged.mean("x") == pytest.approx(one.mean("x"))
    a, b = merged.summary("x"), one.summary("x")
    assert (a["min"], a["max"]) == (b["min"], b["max"])
    tol = max(merged.width, one.width)
    for q, v in one.quantiles("x").items():
        assert merged.quantiles("x")[q] == pytest.approx(v, abs=tol)
    exact = np.quantile(np.concatenate(shards), 0.5)
    assert one.quantiles("x")["q50"] == pytest.approx(exact, abs=one.width)
    # widening keeps every count: 0 then huge values re-bin without loss
    h = Histogram(bins=64)
    h.add([0.0] * 10)
    h.add([1e6])
    h.add([-5.0])
    assert h.count() == 12 and h.quantiles("all")["q50"] == pytest.approx(0.0, abs=h.width)


def test_memory_does_not_grow_with_rows() -> None:
    rng = np.random.default_rng(0)
    small, big = Histogram(), Histogram()
    small.add(rng.normal(size=1_000), "kept")
    for _ in range(10):
        big.add(rng.normal(size=100_000), "kept")
    assert big.count() == 1_000_000
    assert small.nbytes == big.nbytes
    assert len(json.dumps(big.to_dict())) < 60_000  # the JSON holds bins, never values


def test_nonfinite_values_are_counted_apart() -> None:
    h = Histogram(-1.0, 1.0, bins=20)
    h.add([0.5, float("nan"), float("inf"), 2.0])  # 2.0: clipped into the last bin, max kept exact
    s = h.summary("all")
    assert (s["count"], s["nonfinite"], s["max"]) == (2, 2, 2.0)


def _data() -> ReportData:
    h = Histogram()
    h.add([1.0, 2.0, 3.0], "kept")
    h.add([0.1, 0.2], "dropped")
    return ReportData(
        title="vlcurate run: r.yaml",
        command="run",
        inputs="pool/shards",
        recipe="r.yaml",
        rows=5,
        kept=3,
        steps=[
            {"op": "text_length", "saw": 5, "kept": 4, "dropped": 1, "seconds": 0.01},
            {"op": "clip_score", "saw": 4, "kept": 3, "dropped": 1, "seconds": 1.5},
        ],
        reasons=Counter({HOSTILE: 1, "too short | `x`": 1}),
        histograms={"clip_score": h},
        failed_shards={"00001": f"broke: {HOSTILE}"},
        failed_pairs=1,
        warnings=[f"warning {HOSTILE}"],
        counts={"pairs by status": {"ok": 4, HOSTILE: 1}},
        extra={"source": {"input": "pool/shards"}, "stages": []},
    )


def test_html_and_markdown_escape_hostile_text(tmp_path: Path) -> None:
    write_report(tmp_path, _data())
    page = (tmp_path / "report.html").read_text()
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    md = (tmp_path / "report.md").read_text()
    assert "<script>" not in md and "too short \\| 'x'" in md


def test_markdown_has_the_steps_table_and_plots(tmp_path: Path) -> None:
    report = write_report(tmp_path, _data())
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# vlcurate run: r.yaml\n")
    assert "| step | saw | kept | dropped | seconds |" in md
    assert "| text_length | 5 | 4 | 1 | 0.01 |" in md and "| clip_score | 4 | 3 | 1 | 1.50 |" in md
    assert "![clip_score](plots/clip_score.png)" in md
    assert (tmp_path / "plots" / "clip_score.png").stat().st_size > 1000
    assert not list(tmp_path.rglob("*.tmp*"))
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    st = on_disk["statistics"]["clip_score"]
    assert st["count"] == 5 and set(st["series"]) == {"kept", "dropped"}
    assert Histogram.from_dict(st["histogram"]).count("kept") == 3


def test_only_the_formats_asked_and_extra_keys_cannot_clash(tmp_path: Path) -> None:
    write_report(tmp_path, _data(), formats=("md",))
    assert (tmp_path / "report.md").exists() and not (tmp_path / "report.json").exists()
    with pytest.raises(ValueError, match="clash"):
        write_report(tmp_path, ReportData(title="t", command="x", extra={"rows": 1}))


def test_the_run_report_keeps_its_keys_and_histograms_its_statistics(
    small_pool: Path, tmp_path: Path
) -> None:
    from vlcurate.ops.engine_local import run_recipe
    from vlcurate.ops.recipe import load_recipe

    text = (
        f"source: {{input: '{small_pool}'}}\n"
        "steps:\n  - {op: text_length, min_words: 4}\n"
        f"sink: {{out: '{tmp_path}'}}\n"
    )
    result = run_recipe(load_recipe("r.yaml", text=text))
    report = json.loads((tmp_path / "report.json").read_text())
    for key in (
        "rows",
        "kept",
        "dropped",
        "steps",
        "drop_reasons",
        "statistics",
        "failures",
        "stages",
        "source",
    ):
        assert key in report
    assert (report["rows"], report["kept"]) == (result.rows, result.kept) and 0 < result.kept < result.rows
    assert report["failures"] == {"failed_shards": {}, "failed_pairs": 0, "shards": 3}
    st = report["statistics"]["caption_words"]
    assert st["plot"] == "plots/caption_words.png" and st["count"] == result.rows
    assert st["series"]["kept"]["count"] == result.kept
    assert st["series"]["dropped"]["count"] == result.rows - result.kept
    for name in ("report.json", "report.md", "report.html", "plots/caption_words.png"):
        assert (tmp_path / name).exists()


def test_score_writes_its_report(small_pool: Path, tmp_path: Path) -> None:
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset

    out = tmp_path / "run"
    cfg = ScoreConfig(model="tiny-synth", batch_size=64, workers=0, progress=False)
    summary = score_dataset(str(small_pool), out, cfg)
    assert summary["pairs"] == 300
    md = (out / "report.md").read_text()
    assert md.startswith("# vlcurate score\n") and "| ok | 300 |" in md
    assert "![score](plots/score.png)" in md
    page = (out / "report.html").read_text()
    assert "plots/score.png" in page and "pairs by status" in page
    assert (out / "plots" / "score.png").stat().st_size > 1000
    assert not (out / "report.json").exists()  # summary.json stays the run's JSON
    assert "score: score 300 (mean" in md


def test_recaption_writes_its_report(small_pool: Path, tmp_path: Path) -> None:
    from tests.platform_live import free_port
    from typer.testing import CliRunner

    from vlcurate.cli.main import app

    out = tmp_path / "rc"
    dead = f"http://127.0.0.1:{free_port()}/v1"  # never asked: the budget is 0
    args = ["recaption", str(small_pool), "--out", str(out), "--vlm-url", dead, "--cache-dir", "none", "-q"]
    r = CliRunner().invoke(app, [*args, "--budget-requests", "0"])
    assert r.exit_code == 3, r.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["histogram_png"].endswith("scores_before_after.png")
    assert summary["quantiles_before"] == summary["quantiles_after"]  # nothing replaced
    md = (out / "report.md").read_text()
    assert md.startswith("# vlcurate recaption\n") and "| budget | 300 |" in md
    assert "![scores](scores_before_after.png)" in md and "before 300 (mean" in md
    assert (out / "scores_before_after.png").stat().st_size > 1000 and (out / "report.html").exists()
