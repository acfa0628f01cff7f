"""Slices of an evaluation run and their scores: where failures concentrate.

A slice is a category, a benchmark attribute (`meta`, e.g. colour=red), a category and attribute
together, two attributes together (colour=red and present=true), or a confusion (reference and wrong
answer swapped within a pair of values, e.g. circle|square). Its score is the number of failures it
has beyond what the rest of the run's failure rate predicts, taken at the lower end of the slice's
95% interval, so a big slice that fails a bit more and a tiny slice that fails by chance both score
low, and a slice that explains many failures scores high. Slices are chosen greedily: after the best
one, failures it explains no longer count (neither in later slices nor in their baselines), so each
weakness is a different set of failures.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from vlcurate.base.intervals import wilson
from vlcurate.evals.results import SampleResult
from vlcurate.vlm.prompts import normalize_answer

MAX_VALUES = 24  # meta keys with more distinct values (ids, seeds, paths) are not attributes
MIN_FAILURES = 2
OVERLAP = 0.8  # a slice whose failures are this much inside a better slice's adds nothing


@dataclass
class Slice:
    category: str | None
    attribute: dict[str, str]
    rows: list[int]  # indices into the run's rows
    failing: list[int]
    confusions: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        parts = [f"category={self.category}"] if self.category else []
        parts += [f"{k}={v}" for k, v in self.attribute.items()]
        return ", ".join(parts)


@dataclass
class Scored:
    slice: Slice
    score: float
    rate: float
    ci95: tuple[float, float]
    rest_rate: float
    n: int = 0  # answers and failures scored (those no better slice explains)
    f: int = 0


def attribute_values(row: SampleResult) -> dict[str, str]:
    """The scalar meta fields of a row, as strings (lists and dicts are not attributes)."""
    out: dict[str, str] = {}
    for k, v in row.meta.items():
        if isinstance(v, bool | int | str) and str(v).strip():
            out[k] = str(v).strip().lower()
    return out


def in_slice(row: SampleResult, category: str | None, attribute: dict[str, str]) -> bool:
    """Whether a row belongs to a weakness's slice (`a|b` values: either)."""
    if category is not None and row.category != category:
        return False
    values = attribute_values(row)
    return all(values.get(k) in v.split("|") for k, v in attribute.items())


def chosen_text(row: SampleResult, value: str | None) -> str:
    """An extracted answer as text: an option letter becomes its choice."""
    v = normalize_answer(value)
    if row.choices and len(v) == 1 and v.isalpha():
        i = ord(v.upper()) - ord("A")
        if 0 <= i < len(row.choices):
            return normalize_answer(row.choices[i])
    return v


def _candidates(rows: Sequence[SampleResult], failed: Sequence[bool]) -> list[Slice]:
    by_cat: dict[str, list[int]] = {}
    by_attr: dict[tuple[str, str], list[int]] = {}
    by_cat_attr: dict[tuple[str, str, str], list[int]] = {}
    values: dict[str, set[str]] = {}
    for i, r in enumerate(rows):
        by_cat.setdefault(r.category, []).append(i)
        for k, v in attribute_values(r).items():
            values.setdefault(k, set()).add(v)
            by_attr.setdefault((k, v), []).append(i)
            by_cat_attr.setdefault((r.category, k, v), []).append(i)
    usable = {k for k, vs in values.items() if 1 < len(vs) <= MAX_VALUES}

    def fails(idx: list[int]) -> list[int]:
        return [i for i in idx if failed[i]]

    by_pair: dict[tuple[str, str, str, str], list[int]] = {}
    for i, r in enumerate(rows):
        attrs = sorted((k, v) for k, v in attribute_values(r).items() if k in usable)
        for a in range(len(attrs)):
            for b in range(a + 1, len(attrs)):
                by_pair.setdefault((*attrs[a], *attrs[b]), []).append(i)
    out = [Slice(c, {}, idx, fails(idx)) for c, idx in by_cat.items()]
    out += [Slice(None, {k1: v1, k2: v2}, idx, fails(idx)) for (k1, v1, k2, v2), idx in by_pair.items()]
    out += [Slice(None, {k: v}, idx, fails(idx)) for (k, v), idx in by_attr.items() if k in usable]
    out += [Slice(c, {k: v}, idx, fails(idx)) for (c, k, v), idx in by_cat_attr.items() if k in usable]
    out += _confusions(rows, failed, by_cat, values)
    return out


def _confusions(
    rows: Sequence[SampleResult],
    failed: Sequence[bool],
    by_cat: dict[str, list[int]],
    values: dict[str, set[str]],
) -> list[Slice]:
    """Pairs of values a category mixes up: failures whose reference is a and answer b (or b, a).
    When both are values of one attribute (shape) and mixed up both ways, the pair is also a slice
    over every category:
    items about either value (counting circles fails too when circles look like squares)."""
    out: list[Slice] = []
    for cat, idx in by_cat.items():
        pairs: Counter[tuple[str, str]] = Counter()
        swaps: Counter[str] = Counter()
        for i in idx:
            r = rows[i]
            if not failed[i] or r.answer is None or r.extracted is None:
                continue
            ref, got = normalize_answer(r.answer), chosen_text(r, r.extracted)
            if ref and got and ref != got and not ref.isdigit() and ref not in ("yes", "no"):
                a, b = sorted((ref, got))
                pairs[a, b] += 1
                swaps[f"{ref}->{got}"] += 1
        for (a, b), k in pairs.items():
            if k < MIN_FAILURES:
                continue
            members = [i for i in idx if normalize_answer(rows[i].answer) in (a, b)]
            conf = Counter({s: c for s, c in swaps.items() if set(s.split("->")) == {a, b}})
            out.append(Slice(cat, {cat: f"{a}|{b}"}, members, [i for i in members if failed[i]], conf))
            both_ways = conf[f"{a}->{b}"] > 0 and conf[f"{b}->{a}"] > 0  # swapped, not one-sided
            for key, vals in values.items():
                if both_ways and a in vals and b in vals:
                    across = [i for i, r in enumerate(rows) if attribute_values(r).get(key) in (a, b)]
                    out.append(Slice(None, {key: f"{a}|{b}"}, across, [i for i in across if failed[i]], conf))
    return out


def score_slice(
    s: Slice, total_rows: int, total_failed: int, explained: frozenset[int] = frozenset()
) -> Scored:
    """Excess failures of a slice over the rest of the run; failures a chosen slice already explains
    are left out on both sides (so one weakness does not inflate the baseline of the next)."""
    rows = [i for i in s.rows if i not in explained]
    n, f = len(rows), sum(1 for i in s.failing if i not in explained)
    rest_n = total_rows - len(explained) - n
    rest_f = total_failed - len(explained) - f
    rest = rest_f / rest_n if rest_n > 0 else 0.0
    lo, hi = wilson(f, n)
    return Scored(s, max(0.0, n * (lo - rest)), f / n if n else 0.0, (lo, hi), rest, n, f)


def rank_slices(rows: Sequence[SampleResult], failed: Sequence[bool], *, limit: int = 20) -> list[Scored]:
    """Greedy: the best slice, then the best one over the failures it leaves unexplained, and so on."""
    total_failed = sum(failed)
    cands = [s for s in _candidates(rows, failed) if len(s.failing) >= MIN_FAILURES]
    chosen: list[Scored] = []
    explained: frozenset[int] = frozenset()
    while cands and len(chosen) < limit:
        scored = [score_slice(s, len(rows), total_failed, explained) for s in cands]
        # Ties go to the simpler slice (fewer conditions), then to the bigger one.
        scored.sort(key=lambda x: (-round(x.score, 9), _conditions(x.slice), -len(x.slice.failing)))
        best = scored[0]
        if best.score <= 0:
            break
        chosen.append(best)
        explained = explained | frozenset(best.slice.failing)
        cands = [
            s
            for s in cands
            if s is not best.slice
            and len(set(s.failing) - explained) >= max(MIN_FAILURES, (1 - OVERLAP) * len(s.failing))
        ]
    return chosen


def _conditions(s: Slice) -> int:
    return (1 if s.category else 0) + len(s.attribute)


def majority(kinds: Callable[[int], str], idx: Sequence[int]) -> Counter[str]:
    return Counter(kinds(i) for i in idx)
