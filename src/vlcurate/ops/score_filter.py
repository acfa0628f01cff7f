"""`vlcurate filter` as a recipe: score tables in, a DataComp subset, per-uid decisions and a report out.

The selection is the recipe engine's, with the same operators any recipe uses:
- the score-table source (`io.score_tables`) drops rows whose status is not ok (`status:VALUE`) and
  rows with a null, NaN or out-of-range score (`invalid_score`);
- `--threshold T` is `score_threshold` (min T); `--top-fraction F` is `top_fraction` (exact, with a
  bounded-memory mode of a histogram pass and a pass over the bin holding the cut);
- the caption/size rules are `datacomp_basic`.
Order of the selection (`fraction_of`): "pool" (default) takes the top fraction of every row with
status ok and a valid score, then intersects with the rules (the cut comes first), as DataComp
intersects independently applied baselines and as DFN's released indices are the top 15% of the
whole pool; "after-rules" runs the rules first and takes the top fraction of the rows they keep,
so exactly ceil(F * N_rules) (+ ties) are kept.
The engine runs in a staging folder beside `--out`; its per-shard decisions are gathered into one
`decisions.parquet`, and the folder appears complete or not at all.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate import __version__
from vlcurate.base.report import Histogram, ReportData, write_report
from vlcurate.io.score_tables import InputSet, resolve_inputs
from vlcurate.io.staged_dir import check_out_dir, commit, make_staging
from vlcurate.ops.base import DROPPED_BY, REASON, REASONS, SOURCE
from vlcurate.ops.engine_local import LocalEngine
from vlcurate.ops.exact_cut import histogram, quantiles_from_hist
from vlcurate.ops.recipe import Recipe, SinkSpec, SourceSpec, Step
from vlcurate.ops.score_filter_config import FilterConfig, FilterResult, RuleSettings
from vlcurate.ops.score_ops import TopFraction

DECISIONS_SCHEMA = pa.schema(
    [
        pa.field("uid", pa.string(), nullable=False),
        pa.field("score", pa.float64()),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("reasons", pa.list_(pa.string()), nullable=False),
        pa.field("shard", pa.string(), nullable=False),
    ]
)

QUANTILES = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
LANGUAGE_NOTE = (
    "DataComp's English check (fastText) is not applied by `vlcurate filter`; it is the `language` "
    "operator of `vlcurate run` (see recipes/datacomp_basic.yaml)"
)
TIE_RULE = (
    "k = ceil(F * N) over the N eligible rows; the threshold is the k-th largest eligible score; every "
    "row with score >= threshold is kept, so all rows tied at the cut are kept (kept = k + extra ties)"
)


def _describe(cfg: FilterConfig) -> str:
    if cfg.threshold is not None:
        return f"score >= {cfg.threshold!r}"
    of = "the pool (status ok, valid score)" if cfg.fraction_of == "pool" else "rows passing the rules"
    return f"global top fraction {cfg.top_fraction!r} of {of}; ties at the cut kept"


def input_problems(summary_json: Path | None) -> list[str]:
    """Shards that the score run behind the input did not finish or read only in part."""
    if summary_json is None:
        return []
    try:
        summary = json.loads(summary_json.read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(summary, dict):
        return []
    out: list[str] = []
    missing = [str(m) for m in summary.get("shards_missing") or []]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        out.append(
            f"the score run ({summary_json.parent}) did not finish {len(missing)} of "
            f"{summary.get('shards_total', '?')} shards ({shown}): their pairs are not in the subset"
        )
    partial = [p for p in summary.get("partial_shards") or [] if isinstance(p, dict)]
    if partial:
        shown = ", ".join(str(p.get("shard")) for p in partial[:5])
        out.append(
            f"the score run read {len(partial)} shards only in part ({shown}): "
            "the pairs after each break are not in the subset"
        )
    return out


def filter_recipe(
    scores: Sequence[str], out: Path, cfg: FilterConfig, score_column: str, rows_per_shard: int | None = None
) -> Recipe:
    """The recipe `vlcurate filter` runs: the score-table source, the cut and the rules, in order."""
    rules = cfg.rules
    steps: list[Step] = []
    if cfg.threshold is not None:
        cut = Step(op="score_threshold", params={"column": score_column, "min": cfg.threshold}, line=0)
    else:
        after = cfg.fraction_of == "after-rules"
        params: dict[str, Any] = {
            "column": score_column,
            "fraction": cfg.top_fraction,
            "among": "kept" if after else "all",
            "memory_budget_mb": cfg.memory_budget_mb,
            "bounded": cfg.bounded_memory,
            "bins": cfg.hist_bins,
            "collect_cap": cfg.collect_cap,
        }
        cut = Step(op="top_fraction", params=params, line=0)
    rule_step = Step(op="datacomp_basic", params=_rule_params(rules), line=0) if rules.any else None
    if rule_step is not None and cfg.top_fraction is not None and cfg.fraction_of == "after-rules":
        steps = [rule_step, cut]
    else:
        steps = [cut] + ([rule_step] if rule_step is not None else [])
    options: dict[str, Any] = {"score_column": score_column}
    if rows_per_shard:
        options["rows_per_shard"] = rows_per_shard
    return Recipe(
        source=SourceSpec(input=list(scores), kind="scores", options=options),
        steps=steps,
        sink=SinkSpec(out=str(out)),
        path="vlcurate filter",
    )


def _rule_params(rules: RuleSettings) -> dict[str, Any]:
    return {
        "min_words": rules.min_words,
        "min_chars": rules.min_chars,
        "min_side": rules.min_side,
        "max_aspect": rules.max_aspect,
        "missing_size": rules.missing_size,
    }


def run_filter(
    scores: str | Path | Sequence[str | Path], out_dir: str | Path, config: FilterConfig
) -> FilterResult:
    """Filter score tables into a DataComp subset plus decisions and reports in `out_dir`."""
    t0 = time.perf_counter()
    cfg = config
    out = Path(out_dir)
    check_out_dir(out, cfg.overwrite)
    items = [scores] if isinstance(scores, (str, Path)) else list(scores)
    inputs = resolve_inputs(items, cfg.score_column)
    col = inputs.columns.score
    problems = input_problems(inputs.summary_json)
    warnings: list[str] = list(problems)
    staging = make_staging(out)
    try:
        work = staging / "_run"
        recipe = filter_recipe([str(i) for i in items], work, cfg, col)
        engine = LocalEngine(recipe)
        result = engine.run()
        top = next((op for op in engine.ops if isinstance(op, TopFraction)), None)
        threshold = (
            float(cfg.threshold) if cfg.threshold is not None else (top.cut.threshold if top else None)
        )
        shards = [sh.name for sh in engine.source.shards()]
        bounded = (
            bool(top.cut.bounded)
            if top is not None
            else (cfg.bounded_memory or inputs.total_rows * 8 > cfg.memory_budget_mb * 2**20)
        )
        summary = _gather(
            work / "decisions", shards, staging / "decisions.parquet", col, cfg, threshold, bounded
        )
        (work / "subset.npy").replace(staging / "subset.npy")
        summary.subset_size = len(np.load(staging / "subset.npy", mmap_mode="r"))
        shutil.rmtree(work)
        kept, n_total = result.kept, result.rows
        if n_total == 0:
            warnings.append("the input has no rows: wrote an empty subset")
        elif kept == 0:
            warnings.append("no row was kept: the subset is empty")
        if summary.n_invalid:
            warnings.append(
                f"{summary.n_invalid:,} rows with status ok have a null, NaN or out-of-range score: "
                "dropped as invalid_score"
            )
        data = _report(cfg, inputs, problems, summary, threshold, top, kept, n_total, bounded, t0, warnings)
        data.steps = [asdict(st) for st in result.steps]
        report = write_report(staging, data, formats=("json", "md"))
        commit(staging, out, cfg.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return FilterResult(
        kept=kept,
        total=n_total,
        threshold=threshold,
        counts_by_reason=dict(report["counts_by_reason"]),
        out_dir=out,
        subset_path=out / "subset.npy",
        decisions_path=out / "decisions.parquet",
        report_json_path=out / "report.json",
        report_md_path=out / "report.md",
        hist_png_path=out / "score_hist.png" if cfg.plot else None,
        subset_size=report["subset_size"],
        eligible=summary.n_valid if top is None else top.cut.count,
        target_k=top.cut.k if top is not None else None,
        bounded_memory=bounded,
        input_form=inputs.form,
        score_column=col,
        warnings=warnings,
        input_problems=problems,
    )


class _Summary:
    """What the gathering pass counts: reasons, the score histogram, kept by score and ties."""

    def __init__(self, n_bins: int, exact: bool) -> None:
        self.first: Counter[str] = Counter()
        self.every: Counter[str] = Counter()
        self.hist = np.zeros(n_bins, dtype=np.int64)
        self.plot = Histogram(-1.0, 1.0)  # valid scores, kept against dropped, for report and plot
        self.valid: list[np.ndarray] | None = [] if exact else None
        self.n_valid = self.n_invalid = self.kept_by_score = self.ties = self.subset_size = 0


def _gather(
    folder: Path,
    shards: list[str],
    dest: Path,
    col: str,
    cfg: FilterConfig,
    threshold: float | None,
    bounded: bool,
) -> _Summary:
    """The engine's per-shard decisions as one `decisions.parquet` (DECISIONS_SCHEMA), counted; the
    valid scores are held for exact quantiles only when the cut itself held them."""
    s = _Summary(cfg.hist_bins, exact=not bounded)
    with pq.ParquetWriter(dest, DECISIONS_SCHEMA) as writer:
        for name in shards:
            path = folder / f"{name}.parquet"
            if not path.exists():
                continue
            pf = pq.ParquetFile(path)
            columns = ["uid", col, "keep", REASON, REASONS, "shard", DROPPED_BY]
            for rb in pf.iter_batches(batch_size=65_536, columns=columns):
                t = pa.Table.from_batches([rb])
                score = t.column(col).combine_chunks().cast(pa.float64())
                valid = ~np.asarray(pc.fill_null(pc.equal(t.column(DROPPED_BY), SOURCE), False), dtype=bool)
                reason = pc.fill_null(t.column(REASON), "").combine_chunks()
                invalid = np.asarray(pc.equal(reason, "invalid_score"), dtype=bool)
                s.n_invalid += int(invalid.sum())
                v = np.asarray(pc.fill_null(score, np.nan), dtype=np.float64)[valid]
                kept_v = np.asarray(t.column("keep"), dtype=bool)[valid]
                s.plot.add(v[kept_v], "kept")
                s.plot.add(v[~kept_v], "dropped")
                s.n_valid += len(v)
                s.hist += histogram(v, cfg.hist_bins)
                if s.valid is not None:
                    s.valid.append(v)
                if threshold is not None:
                    s.kept_by_score += int((v >= threshold).sum())
                    s.ties += int((v == threshold).sum())
                for x in pc.value_counts(reason).to_pylist():
                    s.first[x["values"]] += x["counts"]
                flat = pc.list_flatten(t.column(REASONS).combine_chunks())
                if len(flat):
                    for x in pc.value_counts(flat).to_pylist():
                        s.every[x["values"]] += x["counts"]
                writer.write_table(
                    pa.table(
                        [
                            t.column("uid"),
                            score,
                            t.column("keep"),
                            reason,
                            t.column(REASONS),
                            t.column("shard"),
                        ],
                        schema=DECISIONS_SCHEMA,
                    )
                )
    s.first.pop("", None)  # kept rows have an empty reason
    return s


def _report(
    cfg: FilterConfig,
    inputs: InputSet,
    problems: list[str],
    s: _Summary,
    threshold: float | None,
    top: TopFraction | None,
    kept: int,
    n_total: int,
    bounded: bool,
    t0: float,
    warnings: list[str],
) -> ReportData:
    """What was read, how the cut was made, what was kept and why the rest was not, for the shared
    report writer (report.json keeps every key `vlcurate filter` has always written)."""
    rules = cfg.rules
    if s.valid is not None and not bounded:
        allv = np.concatenate(s.valid) if s.valid else np.empty(0)
        quantiles = (
            {
                f"p{round(q * 100):g}": float(v)
                for q, v in zip(QUANTILES, np.quantile(allv, QUANTILES), strict=True)
            }
            if len(allv)
            else {}
        )
        q_method = "exact"
    else:
        quantiles = quantiles_from_hist(s.hist, QUANTILES)
        q_method = f"histogram of {len(s.hist)} bins (within {2 / len(s.hist):.1e})"
    names = {
        "subset": "subset.npy",
        "decisions": "decisions.parquet",
        "report_json": "report.json",
        "report_md": "report.md",
        "score_hist": "score_hist.png" if cfg.plot else None,
    }
    is_top = cfg.top_fraction is not None
    extra: dict[str, Any] = {
        "vlcurate_version": __version__,
        "selection": {
            "mode": "top_fraction" if is_top else "threshold",
            "threshold_requested": cfg.threshold,
            "top_fraction": cfg.top_fraction,
            "fraction_of": cfg.fraction_of if is_top else None,
            "description": _describe(cfg),
            "tie_rule": TIE_RULE if is_top else "score >= threshold (float64 comparison)",
            "eligible": top.cut.count if top is not None else s.n_valid,
            "target_k": top.cut.k if top is not None else None,
            "kept_by_score": s.kept_by_score,
            "ties_at_cut": s.ties,
        },
        "rules": {
            "basic": cfg.basic,
            "min_words": rules.min_words,
            "min_chars": rules.min_chars,
            "min_side": rules.min_side,
            "max_aspect": rules.max_aspect,
            "missing_size": rules.missing_size,
            "language": "not applied",
            "language_note": LANGUAGE_NOTE,
        },
        "threshold": threshold,
        "total": n_total,
        "valid": s.n_valid,
        "kept_share": kept / n_total if n_total else 0.0,
        "subset_size": s.subset_size,
        "counts_by_reason": dict(sorted(s.first.items(), key=lambda kv: (-kv[1], kv[0]))),
        "counts_by_rule": dict(sorted(s.every.items(), key=lambda kv: (-kv[1], kv[0]))),
        "quantiles": quantiles,
        "quantiles_method": q_method,
        "bounded_memory": bounded,
        "memory_budget_mb": cfg.memory_budget_mb,
        "passes": (top.cut.passes if top is not None else 0) + 1,
        "elapsed_s": round(time.perf_counter() - t0, 3),
        "outputs": {k: v for k, v in names.items() if v},
    }
    return ReportData(
        title="vlcurate filter report",
        command="filter",
        inputs={
            "files": [str(f) for f in inputs.files],
            "form": inputs.form,
            "score_column": inputs.columns.score,
            "summary_json": str(inputs.summary_json) if inputs.summary_json else None,
            "problems": problems,
        },
        rows=n_total,
        kept=kept,
        reasons=Counter(s.first),
        histograms={"score": s.plot} if cfg.plot else {},
        plot_paths={"score": "score_hist.png"},
        cuts={"score": threshold} if threshold is not None else {},
        warnings=warnings,
        notes=[
            f"selection: {_describe(cfg)}",
            f"threshold used: {threshold if threshold is not None else 'none'}",
            f"memory mode: {'bounded (streaming, exact)' if bounded else 'in memory'}",
            f"language: {LANGUAGE_NOTE}",
        ],
        extra=extra,
    )
