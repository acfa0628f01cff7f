"""Paired validation of an increment: McNemar and the paired bootstrap per category, the no-regression
rule, and runs that cannot be paired. Runs are written and read in the real run format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from vlcurate.evals.paired import EXACT_LIMIT, PairingError, compare_runs, mcnemar_p
from vlcurate.evals.results import EvalRun, SampleResult, load_run


def write_run(
    path: Path, rows: list[tuple[str, str, bool | None]], bench: str = "bench.jsonl", repeats: int = 1
) -> EvalRun:
    """A run folder with config.json and samples.jsonl: one line per (id, category, correct) and repeat."""
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"bench": bench, "model": "m", "repeats": repeats}))
    with (path / "samples.jsonl").open("w") as fh:
        for sid, cat, ok in rows:
            for r in range(repeats):
                res = SampleResult(
                    id=sid,
                    repeat=r,
                    category=cat,
                    question="q?",
                    answer="a",
                    correct=ok,
                    status="ok" if ok is not None else "error",
                )
                fh.write(res.model_dump_json() + "\n")
    return load_run(path)


def pattern(
    cat: str, both: int, base_only: int, new_only: int, neither: int
) -> tuple[list[tuple[str, str, bool | None]], list[tuple[str, str, bool | None]]]:
    """Rows of a base and a new run for one category with the given concordant/discordant counts."""
    base: list[tuple[str, str, bool | None]] = []
    new: list[tuple[str, str, bool | None]] = []
    k = 0
    for n, (x, y) in (
        (both, (True, True)),
        (base_only, (True, False)),
        (new_only, (False, True)),
        (neither, (False, False)),
    ):
        for _ in range(n):
            base.append((f"{cat}-{k}", cat, x))
            new.append((f"{cat}-{k}", cat, y))
            k += 1
    return base, new


def runs(tmp_path: Path, spec: dict[str, tuple[int, int, int, int]], **kw: object) -> tuple[EvalRun, EvalRun]:
    base: list[tuple[str, str, bool | None]] = []
    new: list[tuple[str, str, bool | None]] = []
    for cat, counts in spec.items():
        b, n = pattern(cat, *counts)
        base += b
        new += n
    return write_run(tmp_path / "base", base, **kw), write_run(tmp_path / "new", new, **kw)  # type: ignore[arg-type]


def test_mcnemar_exact_p_values() -> None:
    assert mcnemar_p(0, 10) == pytest.approx(2 / 1024)
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(1, 9) == pytest.approx(2 * 11 / 1024)
    # The normal approximation takes over smoothly above the exact limit.
    b = EXACT_LIMIT // 2 - 40
    c = EXACT_LIMIT - b
    assert math.isclose(mcnemar_p(b, c), mcnemar_p(b, c + 1), rel_tol=0.3)


def test_a_closed_weakness_is_accepted_and_its_target_improves(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (10, 0, 14, 6), "shape": (25, 2, 3, 0), "count": (20, 1, 1, 8)})
    d = compare_runs(base, new, target="colour")
    c = d.categories["colour"]
    assert (c.n, c.base_correct, c.new_correct, c.improvements, c.regressions) == (30, 10, 24, 14, 0)
    assert c.improved and not c.regressed and c.p_value == pytest.approx(2 / 2**14)
    assert c.ci is not None and c.ci[0] > 0 and c.delta == pytest.approx(14 / 30)
    assert d.accepted and not any(x.regressed for x in d.categories.values())
    assert d.n_pairs == 90 and d.overall.n == 90
    assert "target colour improved" in " ".join(d.reasons)


def test_a_regression_in_any_category_rejects_the_increment(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (10, 0, 14, 6), "shape": (15, 12, 0, 3)})
    for method in ("mcnemar", "bootstrap"):
        d = compare_runs(base, new, method=method)  # type: ignore[arg-type]
        assert not d.accepted and d.categories["shape"].regressed, method
        assert any(r.startswith("shape regressed: 0.900 -> 0.500") for r in d.reasons), d.reasons
        assert not d.categories["colour"].regressed


def test_noise_is_not_a_regression_and_a_flat_target_is_rejected(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (20, 3, 2, 5), "shape": (25, 1, 1, 3)})
    d = compare_runs(base, new)
    assert d.accepted and not d.categories["colour"].regressed
    t = compare_runs(base, new, target="shape")
    assert not t.accepted and "target shape did not improve" in " ".join(t.reasons)
    with pytest.raises(ValueError, match="target category 'size' is not in the runs"):
        compare_runs(base, new, target="size")


def test_bootstrap_resamples_items_with_their_repeats(tmp_path: Path) -> None:
    base, new = runs(tmp_path, {"colour": (10, 0, 14, 6), "shape": (25, 2, 3, 0)}, repeats=3)
    a = compare_runs(base, new, method="bootstrap", n_boot=500, seed=3)
    b = compare_runs(base, new, method="bootstrap", n_boot=500, seed=3)
    assert a == b and a.accepted and a.categories["colour"].n == 90
    ci = a.categories["colour"].ci
    assert ci is not None and ci[0] < a.categories["colour"].delta < ci[1] and ci[0] > 0  # type: ignore[operator]
    # Repeats are not independent draws: the bootstrap interval over 30 items is wider than McNemar's
    # interval that treats the 90 answers as 90 pairs.
    m = compare_runs(base, new, method="mcnemar").categories["colour"].ci
    assert m is not None and (ci[1] - ci[0]) > (m[1] - m[0])


def test_unscored_pairs_are_left_out_and_counted(tmp_path: Path) -> None:
    b, n = pattern("colour", 10, 0, 5, 5)
    n[0] = (n[0][0], "colour", None)
    d = compare_runs(write_run(tmp_path / "b", b), write_run(tmp_path / "n", n))
    assert d.unscored == 1 and d.n_pairs == 19 and any("unscored" in r for r in d.reasons)


def test_runs_that_cannot_be_paired_are_refused(tmp_path: Path) -> None:
    b, n = pattern("colour", 10, 0, 5, 5)
    base = write_run(tmp_path / "b", b, bench="bench_a.jsonl")
    with pytest.raises(PairingError, match="different benchmarks"):
        compare_runs(base, write_run(tmp_path / "other", n, bench="bench_b.jsonl"))
    short = write_run(tmp_path / "short", n[:15], bench="bench_a.jsonl")
    with pytest.raises(PairingError, match=r"not on the same items: 5 \(id, repeat\) only in"):
        compare_runs(base, short)
    partial = compare_runs(base, short, allow_partial=True)
    assert (
        partial.unpaired == 5 and partial.n_pairs == 15 and any("one run only" in r for r in partial.reasons)
    )
    moved = [(sid, "shape" if i == 0 else cat, ok) for i, (sid, cat, ok) in enumerate(n)]
    with pytest.raises(PairingError, match="in category 'colour' in one run and 'shape' in the other"):
        compare_runs(base, write_run(tmp_path / "moved", moved, bench="bench_a.jsonl"))
    disjoint = [(f"x{i}", c, ok) for i, (_, c, ok) in enumerate(n)]
    with pytest.raises(PairingError, match="share no items"):
        compare_runs(
            base, write_run(tmp_path / "disjoint", disjoint, bench="bench_a.jsonl"), allow_partial=True
        )
    with pytest.raises(ValueError, match="unknown method"):
        compare_runs(base, base, method="ttest")  # type: ignore[arg-type]
