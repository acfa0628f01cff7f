"""`run_filter` end to end on score tables and DataComp metadata built in tmp_path."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from filter_tables import hex_uids, write_datacomp, write_scores
from PIL import Image

from vlcurate.io.score_tables import ScoreTableError
from vlcurate.io.staged_dir import OutputDirError
from vlcurate.io.subset import SUBSET_DTYPE, array_to_uids, read_subset
from vlcurate.ops.score_filter import run_filter
from vlcurate.ops.score_filter_config import FilterConfig

ScoreRun = Callable[..., tuple[Path, list[str], np.ndarray]]


def _decisions(out: Path) -> dict[str, dict[str, Any]]:
    rows = pq.read_table(out / "decisions.parquet").to_pylist()
    return {r["uid"]: r for r in rows}


def load_subset(path: Path) -> np.ndarray:
    """The subset array as every consumer reads it (`io.subset.read_subset`)."""
    arr = read_subset(path)
    assert arr.dtype == SUBSET_DTYPE
    return arr


def _kept(out: Path) -> set[str]:
    return set(array_to_uids(load_subset(out / "subset.npy")))


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.333, 0.5, 1.0])
def test_top_fraction_matches_brute_force_sort_across_shards(
    score_run: ScoreRun, tmp_path: Path, fraction: float
) -> None:
    run, uids, scores = score_run()
    res = run_filter(run, tmp_path / "out", FilterConfig(top_fraction=fraction))
    s64 = scores.astype(np.float64)
    k = math.ceil(round(fraction * len(s64), 9))
    t = -np.sort(-s64)[k - 1]
    expect = {u for u, s in zip(uids, s64, strict=True) if s >= t}
    assert res.threshold == t
    assert res.target_k == k
    assert res.kept == len(expect) == int((s64 >= t).sum())
    assert res.kept >= k
    assert _kept(tmp_path / "out") == expect
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["selection"]["ties_at_cut"] == int((s64 == t).sum())
    assert report["kept"] == res.kept and report["total"] == len(uids)


def test_ties_at_the_cut_are_all_kept(tmp_path: Path) -> None:
    uids = hex_uids(6, seed=5).to_pylist()
    write_scores(tmp_path / "a.parquet", uids[:3], [0.9, 0.5, 0.1])
    write_scores(tmp_path / "b.parquet", uids[3:], [0.5, 0.8, 0.5])
    res = run_filter(tmp_path / "*.parquet", tmp_path / "out", FilterConfig(top_fraction=0.5))
    assert res.target_k == 3
    assert res.threshold == 0.5
    assert res.kept == 5  # k=3 plus the two other rows tied at 0.5
    assert _kept(tmp_path / "out") == set(uids) - {uids[2]}


def test_threshold_mode_keeps_score_at_or_above(score_run: ScoreRun, tmp_path: Path) -> None:
    run, uids, scores = score_run(n_shards=2)
    res = run_filter(run, tmp_path / "out", FilterConfig(threshold=0.3))
    expect = {u for u, s in zip(uids, scores, strict=True) if float(s) >= 0.3}
    assert _kept(tmp_path / "out") == expect
    assert res.threshold == 0.3 and res.target_k is None
    dec = _decisions(tmp_path / "out")
    for u, s in zip(uids, scores, strict=True):
        assert dec[u]["keep"] == (float(s) >= 0.3)
        assert dec[u]["reason"] == ("" if float(s) >= 0.3 else "score<0.3")


def test_outputs_subset_decisions_reports(score_run: ScoreRun, tmp_path: Path) -> None:
    run, uids, _ = score_run(n_shards=3)
    out = tmp_path / "out"
    res = run_filter(run, out, FilterConfig(top_fraction=0.25, basic=True))
    arr = np.load(out / "subset.npy")
    assert arr.dtype == SUBSET_DTYPE
    hi, lo = arr["f0"], arr["f1"]
    assert np.all((hi[1:] > hi[:-1]) | ((hi[1:] == hi[:-1]) & (lo[1:] > lo[:-1])))  # sorted and unique
    assert len(arr) == res.kept == res.subset_size
    dec = pq.read_table(out / "decisions.parquet")
    assert dec.column_names == ["uid", "score", "keep", "reason", "reasons", "shard"]
    assert dec.num_rows == len(uids) == res.total
    for r in dec.to_pylist():
        assert (r["reason"] == "") == r["keep"]
        assert (r["reasons"] == []) == r["keep"]
        if not r["keep"]:
            assert r["reasons"][0] == r["reason"]
    kept_in_dec = {r["uid"] for r in dec.to_pylist() if r["keep"]}
    assert kept_in_dec == _kept(out)
    report = json.loads((out / "report.json").read_text())
    assert report["rules"]["language"] == "not applied"
    assert sum(report["counts_by_reason"].values()) + report["kept"] == report["total"]
    assert report["inputs"]["summary_json"].endswith("summary.json")
    assert len(report["inputs"]["files"]) == 3
    assert (out / "report.md").read_text().startswith("# vlcurate filter report")
    with Image.open(out / "score_hist.png") as im:
        im.verify()
        assert im.format == "PNG"
    assert not list(tmp_path.glob(".out.tmp-*"))  # staging folder renamed away


def test_basic_rules_each_with_its_reason(tmp_path: Path) -> None:
    cases = [  # text, width, height, expected first reason
        ("a red circle on grass", 640, 480, ""),
        ("two words", 640, 480, "words<3"),
        ("a b c", 640, 480, "chars<6"),
        ("a red circle on grass", 150, 480, "min_side<200"),
        ("a red circle on grass", 200, 200, ""),
        ("a red circle on grass", 900, 300, ""),
        ("a red circle on grass", 901, 300, "aspect>3"),
        ("a red circle on grass", None, 480, "missing:size"),
        (None, 640, 480, "missing:text"),
        ("  spaced   out  ", 640, 480, "words<3"),
    ]
    uids = hex_uids(len(cases), seed=9).to_pylist()
    write_scores(
        tmp_path / "s.parquet",
        uids,
        [0.5] * len(cases),
        text=[c[0] for c in cases],
        width=[c[1] for c in cases],
        height=[c[2] for c in cases],
    )
    run_filter(tmp_path / "s.parquet", tmp_path / "out", FilterConfig(threshold=0.0, basic=True))
    dec = _decisions(tmp_path / "out")
    for u, c in zip(uids, cases, strict=True):
        assert dec[u]["reason"] == c[3], c
    # individual flags override --basic; missing sizes can be kept
    cfg = FilterConfig(
        threshold=0.0, basic=True, min_side=100, max_aspect=4, missing_size="keep", min_words=2
    )
    run_filter(tmp_path / "s.parquet", tmp_path / "out2", cfg)
    dec = _decisions(tmp_path / "out2")
    assert dec[uids[3]]["keep"] and dec[uids[6]]["keep"] and dec[uids[7]]["keep"] and dec[uids[1]]["keep"]
    assert dec[uids[2]]["reason"] == "chars<6"


def test_all_failing_reasons_are_listed(tmp_path: Path) -> None:
    uids = hex_uids(1, seed=11).to_pylist()
    write_scores(tmp_path / "s.parquet", uids, [0.05], text=["hi"], width=[100], height=[400])
    run_filter(tmp_path / "s.parquet", tmp_path / "out", FilterConfig(threshold=0.2, basic=True))
    r = _decisions(tmp_path / "out")[uids[0]]
    assert r["reasons"] == ["score<0.2", "words<3", "chars<6", "min_side<200", "aspect>3"]
    assert r["reason"] == "score<0.2"


def test_status_and_invalid_scores_are_dropped_with_reasons(tmp_path: Path) -> None:
    uids = hex_uids(6, seed=12).to_pylist()
    write_scores(
        tmp_path / "s.parquet",
        uids,
        [0.4, None, float("nan"), 1.5, -1.0, 0.9],
        status=["ok", "decode_error", "ok", "ok", "ok", "ok"],
    )
    res = run_filter(tmp_path / "s.parquet", tmp_path / "out", FilterConfig(top_fraction=1.0))
    dec = _decisions(tmp_path / "out")
    assert [dec[u]["reason"] for u in uids] == [
        "",
        "status:decode_error",
        "invalid_score",
        "invalid_score",
        "",
        "",
    ]
    assert res.kept == 3 and res.eligible == 3
    assert res.counts_by_reason == {"invalid_score": 2, "status:decode_error": 1}
    assert any("invalid_score" in w for w in res.warnings)


def test_fraction_of_pool_versus_after_rules(tmp_path: Path) -> None:
    n = 100
    uids = hex_uids(n, seed=13).to_pylist()
    scores = np.linspace(-0.5, 0.49, n).astype(np.float32)
    text = ["ok caption here" if i < 90 else "no" for i in range(n)]  # the 10 best fail the rule
    write_scores(tmp_path / "s.parquet", uids, scores, text=text)
    pool = run_filter(tmp_path / "s.parquet", tmp_path / "p", FilterConfig(top_fraction=0.2, min_words=3))
    after = run_filter(
        tmp_path / "s.parquet",
        tmp_path / "a",
        FilterConfig(top_fraction=0.2, min_words=3, fraction_of="after-rules"),
    )
    assert pool.target_k == 20 and pool.kept == 10  # top 20 of the pool, half of them fail the rule
    assert after.target_k == 18 and after.kept == 18  # top 20% of the 90 that pass the rule
    assert after.threshold is not None and pool.threshold is not None and after.threshold < pool.threshold
    assert _kept(tmp_path / "a") == {
        u for u, s, t in zip(uids, scores, text, strict=True) if t != "no" and s >= after.threshold
    }


@pytest.mark.parametrize("fraction_of", ["pool", "after-rules"])
def test_bounded_mode_gives_the_same_kept_set(tmp_path: Path, fraction_of: str) -> None:
    rng = np.random.default_rng(21)
    uids_all: list[str] = []
    for s in range(5):
        n = 3000
        uids = [f"{s:02x}{u[2:]}" for u in hex_uids(n, seed=40 + s).to_pylist()]
        sc = np.round(rng.normal(0.2, 0.1, n), 3).clip(-1, 1)
        words = rng.integers(1, 6, n)
        text = [" ".join(["word"] * int(w)) for w in words]
        write_scores(
            tmp_path / "in" / f"{s}.parquet", uids, sc, text=text, width=rng.integers(100, 800, n).tolist()
        )
        uids_all += uids
    for fraction in (0.05, 0.3, 0.77):
        base: dict[str, Any] = {
            "top_fraction": fraction,
            "basic": True,
            "fraction_of": fraction_of,
            "batch_size": 1000,
        }
        mem = run_filter(tmp_path / "in", tmp_path / f"m{fraction}", FilterConfig(**base))
        bnd = run_filter(
            tmp_path / "in",
            tmp_path / f"b{fraction}",
            FilterConfig(**base, bounded_memory=True, collect_cap=50),
        )
        assert not mem.bounded_memory and bnd.bounded_memory
        assert mem.threshold == bnd.threshold and mem.kept == bnd.kept
        assert (tmp_path / f"m{fraction}" / "subset.npy").read_bytes() == (
            tmp_path / f"b{fraction}" / "subset.npy"
        ).read_bytes()
        dm = pq.read_table(tmp_path / f"m{fraction}" / "decisions.parquet")
        db = pq.read_table(tmp_path / f"b{fraction}" / "decisions.parquet")
        assert dm.equals(db)
        rep = json.loads((tmp_path / f"m{fraction}" / "report.json").read_text())
        assert rep["selection"]["ties_at_cut"] > 1  # the cut falls on a tie


def test_memory_budget_switches_to_bounded(score_run: ScoreRun, tmp_path: Path) -> None:
    run, _, _ = score_run(n_shards=2)
    res = run_filter(
        run, tmp_path / "out", FilterConfig(top_fraction=0.5, memory_budget_mb=0.002)
    )  # 262 scores
    assert res.bounded_memory
    ref = run_filter(run, tmp_path / "ref", FilterConfig(top_fraction=0.5))
    assert not ref.bounded_memory and ref.kept == res.kept and ref.threshold == res.threshold


def test_datacomp_metadata_both_columns(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    uids: list[str] = []
    l14: list[float] = []
    b32: list[float] = []
    for s in range(3):
        u = [f"{s:02x}{x[2:]}" for x in hex_uids(200, seed=70 + s).to_pylist()]
        a = np.round(rng.uniform(0.0, 0.45, 200), 3)
        b = np.round(rng.uniform(0.1, 0.40, 200), 3)
        write_datacomp(tmp_path / "meta" / f"{s:08d}.parquet", u, a.tolist(), b.tolist())
        uids += u
        l14 += a.tolist()
        b32 += b.tolist()
    res = run_filter(tmp_path / "meta", tmp_path / "l14", FilterConfig(top_fraction=0.3))
    assert res.input_form == "datacomp" and res.score_column == "clip_l14_similarity_score"
    t = -np.sort(-np.array(l14))[math.ceil(0.3 * 600) - 1]
    assert res.threshold == t
    assert _kept(tmp_path / "l14") == {u for u, s in zip(uids, l14, strict=True) if s >= t}
    res_b = run_filter(
        tmp_path / "meta",
        tmp_path / "b32",
        FilterConfig(threshold=0.28, score_column="clip_b32_similarity_score"),
    )
    assert _kept(tmp_path / "b32") == {u for u, s in zip(uids, b32, strict=True) if s >= 0.28}
    assert res_b.kept == sum(s >= 0.28 for s in b32)
    # size rules read original_width/original_height
    run_filter(tmp_path / "meta", tmp_path / "basic", FilterConfig(threshold=-1.0, min_side=400))
    assert all(r["reason"] == "min_side<400" for r in _decisions(tmp_path / "basic").values())


def test_inputs_as_file_glob_and_list(score_run: ScoreRun, tmp_path: Path) -> None:
    run, _, _ = score_run(n_shards=3)
    files = sorted((run / "scores").glob("*.parquet"))
    r1 = run_filter(files[0], tmp_path / "o1", FilterConfig(threshold=-1.0))
    r2 = run_filter(str(run / "scores" / "*.parquet"), tmp_path / "o2", FilterConfig(threshold=-1.0))
    r3 = run_filter([files[0], files[1], files[0]], tmp_path / "o3", FilterConfig(threshold=-1.0))
    assert (r1.total, r2.total, r3.total) == (250, 750, 500)


def test_empty_table_writes_empty_subset(tmp_path: Path) -> None:
    write_scores(tmp_path / "e.parquet", [], [])
    res = run_filter(tmp_path / "e.parquet", tmp_path / "out", FilterConfig(top_fraction=0.5))
    assert res.total == 0 and res.kept == 0 and res.threshold is None
    assert len(load_subset(tmp_path / "out" / "subset.npy")) == 0
    assert any("no rows" in w for w in res.warnings)


def test_refuses_non_empty_out_dir_unless_overwrite(score_run: ScoreRun, tmp_path: Path) -> None:
    run, _, _ = score_run(n_shards=1)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(OutputDirError, match="not empty"):
        run_filter(run, out, FilterConfig(threshold=0.0))
    assert (out / "keep.txt").exists()
    run_filter(run, out, FilterConfig(threshold=0.0, overwrite=True))
    assert not (out / "keep.txt").exists() and (out / "subset.npy").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_failed_run_leaves_nothing(tmp_path: Path) -> None:
    uids = hex_uids(3, seed=2).to_pylist()
    write_scores(tmp_path / "in" / "a.parquet", uids, [0.1, 0.2, 0.3])
    (tmp_path / "in" / "b.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(ScoreTableError, match="not a readable Parquet"):
        run_filter(tmp_path / "in", tmp_path / "out", FilterConfig(threshold=0.0))
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in"]


def test_subset_round_trips_through_read_subset(score_run: ScoreRun, tmp_path: Path) -> None:
    run, uids, scores = score_run(n_shards=2)
    run_filter(run, tmp_path / "out", FilterConfig(threshold=0.2))
    arr = read_subset(tmp_path / "out" / "subset.npy")
    assert arr.dtype == SUBSET_DTYPE
    assert set(array_to_uids(arr)) == {u for u, s in zip(uids, scores, strict=True) if float(s) >= 0.2}
