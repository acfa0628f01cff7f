"""Incremental validation: is the model trained on base+increment no worse than on base, per category?

Two evaluation runs on the same benchmark are paired per (item id, repeat), so each pair is the same
question answered by both models; a paired test has far more power than comparing two accuracies.

- `mcnemar`: per category, b = pairs base got right and new got wrong, c = the reverse. The p-value is
  the exact two-sided binomial test of b against b + c (the normal approximation with continuity
  correction above `EXACT_LIMIT` discordant pairs); the delta's interval is the Wald interval of a
  paired difference of proportions.
- `bootstrap`: items (all repeats of one id together, so repeats are not counted as independent)
  are resampled with replacement, `n_boot` times; the interval is the percentile interval of the delta
  and the p-value twice the smaller tail.

No-regression rule: the increment is accepted iff no category (nor the overall accuracy) *regressed*,
that is dropped by more than its uncertainty (McNemar: delta < 0 and p < alpha; bootstrap: the whole
interval below 0); with `target`, that category must also have improved the same way. Pairs where
either run has no score (errors, missing answers) are left out and counted in `unscored`.
Runs on different benchmarks, or on different items, are refused with a message that says how they
differ (`allow_partial=True` pairs the items they share instead, and says so in the reasons).
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from statistics import NormalDist
from typing import Literal

import numpy as np
from pydantic import BaseModel

from vlcurate.evals.results import EvalRun, SampleResult

Method = Literal["mcnemar", "bootstrap"]
EXACT_LIMIT = 1000  # discordant pairs up to which McNemar's p-value is the exact binomial one
OVERALL = "(overall)"


class PairingError(ValueError):
    """Two runs that cannot be compared pair by pair (other benchmark, other items)."""


class CategoryComparison(BaseModel):
    category: str
    n: int  # scored pairs
    base_correct: int
    new_correct: int
    base_accuracy: float | None
    new_accuracy: float | None
    delta: float | None  # new - base accuracy
    ci: tuple[float, float] | None  # of the delta, at 1 - alpha
    p_value: float | None
    regressions: int  # base right, new wrong
    improvements: int  # base wrong, new right
    regressed: bool
    improved: bool


class ValidationDecision(BaseModel):
    """The decision on an increment and the evidence behind it (stored with the version)."""

    method: Method
    alpha: float
    base_run: str
    new_run: str
    bench: str | None
    target: str | None
    n_pairs: int
    unscored: int  # pairs left out because either side has no score
    unpaired: int  # items in only one run (0 unless allow_partial)
    overall: CategoryComparison
    categories: dict[str, CategoryComparison]
    accepted: bool
    reasons: list[str]


def _bench_of(run: EvalRun) -> str | None:
    if run.summary is not None:
        return run.summary.bench
    bench = run.config.get("bench")
    return str(bench) if bench else None


def pair_runs(
    base: EvalRun, new: EvalRun, *, allow_partial: bool = False
) -> tuple[list[tuple[SampleResult, SampleResult]], int]:
    """(base, new) results per shared (id, repeat), sorted, and how many keys are in one run only."""
    bb, nb = _bench_of(base), _bench_of(new)
    if bb and nb and _norm(bb) != _norm(nb):
        raise PairingError(f"the runs are on different benchmarks: {base.path} on {bb}, {new.path} on {nb}")
    a, b = base.by_key(), new.by_key()
    if not a or not b:
        empty = base.path if not a else new.path
        raise PairingError(f"{empty} has no answers to compare")
    shared = sorted(set(a) & set(b))
    only_a, only_b = len(set(a) - set(b)), len(set(b) - set(a))
    if not shared:
        raise PairingError(
            f"the runs share no items: {base.path} and {new.path} answered different questions"
        )
    if (only_a or only_b) and not allow_partial:
        example = sorted(set(a) ^ set(b))[0]
        raise PairingError(
            f"the runs are not on the same items: {only_a} (id, repeat) only in {base.path}, {only_b} only "
            f"in {new.path} (e.g. {example[0]!r} repeat {example[1]}); finish both runs, or pair the shared"
        )
    pairs: list[tuple[SampleResult, SampleResult]] = []
    for key in shared:
        x, y = a[key], b[key]
        if x.category != y.category:
            raise PairingError(
                f"item {key[0]!r} is in category {x.category!r} in one run and {y.category!r} in the other"
            )
        pairs.append((x, y))
    return pairs, only_a + only_b


def _norm(path: str) -> str:
    """A benchmark's path, resolved when it exists here (runs made from other folders still match)."""
    p = Path(path)
    return str(p.resolve()) if p.exists() else path.rstrip("/")


def _exact_two_sided(b: int, n: int) -> float:
    """P-value of the two-sided exact binomial test of b successes in n at p = 0.5."""
    if n == 0:
        return 1.0
    k = min(b, n - b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def mcnemar_p(b: int, c: int) -> float:
    n = b + c
    if n <= EXACT_LIMIT:
        return _exact_two_sided(b, n)
    stat = (abs(b - c) - 1) ** 2 / n
    return math.erfc(math.sqrt(stat / 2.0))  # chi-square with 1 df


def _compare_mcnemar(cat: str, pairs: list[tuple[bool, bool]], alpha: float) -> CategoryComparison:
    n = len(pairs)
    base_ok = sum(1 for x, _ in pairs if x)
    new_ok = sum(1 for _, y in pairs if y)
    b = sum(1 for x, y in pairs if x and not y)
    c = sum(1 for x, y in pairs if y and not x)
    if n == 0:
        return _empty(cat)
    delta = (c - b) / n
    z = NormalDist().inv_cdf(1 - alpha / 2)
    var = max(0.0, (b + c) - (c - b) ** 2 / n) / n**2
    half = z * math.sqrt(var)
    p = mcnemar_p(b, c)
    return CategoryComparison(
        category=cat,
        n=n,
        base_correct=base_ok,
        new_correct=new_ok,
        base_accuracy=base_ok / n,
        new_accuracy=new_ok / n,
        delta=delta,
        ci=(max(-1.0, delta - half), min(1.0, delta + half)),
        p_value=p,
        regressions=b,
        improvements=c,
        regressed=delta < 0 and p < alpha,
        improved=delta > 0 and p < alpha,
    )


def _compare_bootstrap(
    cat: str, clusters: list[list[tuple[bool, bool]]], alpha: float, n_boot: int, rng: np.random.Generator
) -> CategoryComparison:
    flat = [p for cl in clusters for p in cl]
    n = len(flat)
    if n == 0:
        return _empty(cat)
    base_ok = sum(1 for x, _ in flat if x)
    new_ok = sum(1 for _, y in flat if y)
    b = sum(1 for x, y in flat if x and not y)
    c = sum(1 for x, y in flat if y and not x)
    delta = (new_ok - base_ok) / n
    sums = np.array([sum(int(y) - int(x) for x, y in cl) for cl in clusters], dtype=np.int64)
    sizes = np.array([len(cl) for cl in clusters], dtype=np.int64)
    k = len(sums)
    parts: list[np.ndarray] = []
    for start in range(0, n_boot, 256):  # in blocks, so memory stays small for big benchmarks
        idx = rng.integers(0, k, size=(min(256, n_boot - start), k))
        parts.append(sums[idx].sum(axis=1) / sizes[idx].sum(axis=1))
    deltas = np.sort(np.concatenate(parts))
    lo = float(deltas[math.floor(alpha / 2 * (n_boot - 1))])
    hi = float(deltas[math.ceil((1 - alpha / 2) * (n_boot - 1))])
    below = float(np.mean(deltas <= 0))
    above = float(np.mean(deltas >= 0))
    p = 1.0 if b == c == 0 else min(1.0, max(2 * min(below, above), 1 / n_boot))
    return CategoryComparison(
        category=cat,
        n=n,
        base_correct=base_ok,
        new_correct=new_ok,
        base_accuracy=base_ok / n,
        new_accuracy=new_ok / n,
        delta=delta,
        ci=(lo, hi),
        p_value=p,
        regressions=b,
        improvements=c,
        regressed=hi < 0,
        improved=lo > 0,
    )


def _empty(cat: str) -> CategoryComparison:
    return CategoryComparison(
        category=cat,
        n=0,
        base_correct=0,
        new_correct=0,
        base_accuracy=None,
        new_accuracy=None,
        delta=None,
        ci=None,
        p_value=None,
        regressions=0,
        improvements=0,
        regressed=False,
        improved=False,
    )


def compare_runs(
    base: EvalRun,
    new: EvalRun,
    *,
    method: Method = "mcnemar",
    alpha: float = 0.05,
    target: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    allow_partial: bool = False,
) -> ValidationDecision:
    """Pair the runs, compare each category, and apply the no-regression rule (see the module doc)."""
    if method not in ("mcnemar", "bootstrap"):
        raise ValueError(f"unknown method {method!r}; expected mcnemar or bootstrap")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    pairs, unpaired = pair_runs(base, new, allow_partial=allow_partial)
    by_cat: dict[str, dict[str, list[tuple[bool, bool]]]] = defaultdict(lambda: defaultdict(list))
    unscored = 0
    for x, y in pairs:
        if x.correct is None or y.correct is None:
            unscored += 1
            continue
        by_cat[x.category][x.id].append((x.correct, y.correct))
    if target is not None and target not in by_cat:
        known = ", ".join(sorted(by_cat)) or "none"
        raise ValueError(f"target category {target!r} is not in the runs (categories: {known})")
    rng = np.random.default_rng(seed)

    def compare(cat: str, clusters: dict[str, list[tuple[bool, bool]]]) -> CategoryComparison:
        if method == "mcnemar":
            return _compare_mcnemar(cat, [p for cl in clusters.values() for p in cl], alpha)
        return _compare_bootstrap(cat, [clusters[k] for k in sorted(clusters)], alpha, n_boot, rng)

    cats = {cat: compare(cat, by_cat[cat]) for cat in sorted(by_cat)}
    everything: dict[str, list[tuple[bool, bool]]] = defaultdict(list)
    for clusters in by_cat.values():
        for k, cl in clusters.items():
            everything[k].extend(cl)
    overall = compare(OVERALL, everything)

    reasons: list[str] = []
    for c in [*cats.values(), overall]:
        if c.regressed:
            reasons.append(
                f"{c.category} regressed: {c.base_accuracy:.3f} -> {c.new_accuracy:.3f} "
                f"(delta {c.delta:+.3f}, CI {c.ci[0]:+.3f}..{c.ci[1]:+.3f}, p={c.p_value:.3g})"  # type: ignore[index]
            )
    accepted = not reasons
    if target is not None:
        t = cats[target]
        if not t.improved:
            accepted = False
            reasons.append(
                f"target {target} did not improve beyond its uncertainty: delta "
                f"{(t.delta or 0):+.3f}, p={(t.p_value if t.p_value is not None else 1):.3g}"
            )
        else:
            reasons.append(f"target {target} improved: delta {t.delta:+.3f} (p={t.p_value:.3g})")
    if accepted and not any(c.regressed for c in cats.values()):
        reasons.insert(
            0, f"no category regressed beyond its {1 - alpha:.0%} interval ({len(cats)} categories)"
        )
    if unpaired:
        reasons.append(f"{unpaired} (id, repeat) answered in one run only were left out")
    if unscored:
        reasons.append(f"{unscored} pairs unscored in either run (errors, missing answers) were left out")
    return ValidationDecision(
        method=method,
        alpha=alpha,
        base_run=base.path,
        new_run=new.path,
        bench=_bench_of(base) or _bench_of(new),
        target=target,
        n_pairs=len(pairs) - unscored,
        unscored=unscored,
        unpaired=unpaired,
        overall=overall,
        categories=cats,
        accepted=accepted,
        reasons=reasons,
    )


def plot_decision(path: Path, decision: ValidationDecision) -> None:
    """A forest plot: each category's accuracy change with its interval, regressions in red,
    improvements in green (PNG, matplotlib Agg, written atomically)."""
    from matplotlib.figure import Figure

    from vlcurate.base.atomic import write_with

    rows = [c for c in [*decision.categories.values(), decision.overall] if c.delta is not None and c.ci]
    fig = Figure(figsize=(6.0, 0.42 * len(rows) + 1.3), dpi=100)
    ax = fig.add_subplot()
    for i, c in enumerate(reversed(rows)):
        assert c.delta is not None and c.ci is not None
        colour = "#c44e52" if c.regressed else "#55a868" if c.improved else "#4c72b0"
        ax.plot([c.ci[0], c.ci[1]], [i, i], color=colour, lw=2)
        ax.plot([c.delta], [i], "o", color=colour)
        ax.text(
            1.02,
            i,
            f"n={c.n}  p={c.p_value:.2g}",
            transform=ax.get_yaxis_transform(),
            va="center",
            fontsize=7,
        )
    ax.axvline(0, color="#333", lw=0.8)
    ax.set_yticks(range(len(rows)), [c.category for c in reversed(rows)], fontsize=8)
    ax.set_xlabel(f"accuracy change, new - base ({1 - decision.alpha:.0%} interval, {decision.method})")
    verdict = "accepted" if decision.accepted else "rejected"
    ax.set_title(f"increment {verdict}", fontsize=10, color="#55a868" if decision.accepted else "#c44e52")
    fig.tight_layout()
    write_with(path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
