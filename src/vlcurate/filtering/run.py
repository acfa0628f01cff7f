"""`run_filter`: score cut + DataComp basic rules over score tables, writing a subset and reports.

Passes over the input (each streams row groups):
1. scan: validate (uids, score column, readable files), count, histogram the valid scores and, in
   the in-memory mode with `--top-fraction`, hold the eligible scores (8 bytes each);
2. only in the bounded mode with `--top-fraction`: collect the distinct scores of the one histogram
   bin that holds the cut (rarely, one finer histogram first);
3. decide: apply status, score validity, the cut and the rules; write decisions.parquet and the
   kept uids.
Order of the selection (`fraction_of`): "pool" (default) takes the top fraction of every row with
status ok and a valid score, then intersects with the rules, as DataComp intersects independently
applied baselines and as DFN's released indices are the top 15% of the whole pool; "after-rules"
takes the top fraction of the rows that pass the rules, so exactly ceil(F * N_rules) (+ ties) are kept.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from vlcurate import __version__
from vlcurate.filtering import report as rep
from vlcurate.filtering.config import IN_MEMORY_BYTES_PER_ROW, FilterConfig, FilterResult, RuleSettings
from vlcurate.filtering.inputs import InputSet, RawBatch, iter_batches, resolve_inputs
from vlcurate.filtering.outputs import check_out_dir, commit, make_staging
from vlcurate.filtering.rules import RuleOutcome, evaluate_rules, reason_columns, score_label
from vlcurate.filtering.subset_spool import PairSpool, uid_pairs
from vlcurate.filtering.threshold import (
    histogram,
    kth_largest,
    kth_largest_bounded,
    quantiles_from_hist,
    target_count,
)
from vlcurate.io.subset import write_subset

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

TIE_RULE = (
    "k = ceil(F * N) over the N eligible rows; the threshold is the k-th largest eligible score; every "
    "row with score >= threshold is kept, so all rows tied at the cut are kept (kept = k + extra ties)"
)


def _stream(
    inputs: InputSet, cfg: FilterConfig, rules: RuleSettings
) -> Iterator[tuple[RawBatch, RuleOutcome]]:
    for b in iter_batches(inputs, cfg.batch_size, need_text=rules.any_text, need_size=rules.any_size):
        yield b, evaluate_rules(b, rules)


def _eligible(o: RuleOutcome, after_rules: bool) -> np.ndarray:
    return o.valid & o.rules_pass if after_rules else o.valid


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


def run_filter(
    scores: str | Path | Sequence[str | Path], out_dir: str | Path, config: FilterConfig
) -> FilterResult:
    """Filter score tables into a DataComp subset plus decisions and reports in `out_dir`."""
    t0 = time.perf_counter()
    cfg = config
    out = Path(out_dir)
    check_out_dir(out, cfg.overwrite)
    inputs = resolve_inputs(scores, cfg.score_column)
    rules = cfg.rules
    budget = cfg.memory_budget_mb * 2**20
    bounded = cfg.bounded_memory or inputs.total_rows * IN_MEMORY_BYTES_PER_ROW > budget
    top = cfg.top_fraction is not None
    after_rules = top and cfg.fraction_of == "after-rules"
    scan_rules = rules if after_rules else RuleSettings()
    problems = input_problems(inputs.summary_json)
    warnings: list[str] = list(problems)

    # Pass 1: scan.
    n_bins = cfg.hist_bins
    hist_pool = np.zeros(n_bins, dtype=np.int64)
    hist_elig = np.zeros(n_bins, dtype=np.int64) if after_rules else hist_pool
    pool_mem: list[np.ndarray] = []
    elig_mem: list[np.ndarray] = []
    n_total = n_valid = n_elig = n_invalid = 0
    for b, o in _stream(inputs, cfg, scan_rules):
        n_total += len(b)
        n_invalid += int(o.invalid_score.sum())
        pool = b.score[o.valid]
        n_valid += len(pool)
        hist_pool += histogram(pool, n_bins)
        el = b.score[_eligible(o, after_rules)] if after_rules else pool
        if after_rules:
            hist_elig += histogram(el, n_bins)
        n_elig += len(el)
        if not bounded:
            pool_mem.append(pool)
            if top and after_rules:
                elig_mem.append(el)
    passes = 1

    # The cut.
    threshold: float | None
    k: int | None = None
    if cfg.threshold is not None:
        threshold = float(cfg.threshold)
    else:
        assert cfg.top_fraction is not None
        k = target_count(cfg.top_fraction, n_elig)
        if k == 0:
            threshold = None
        elif not bounded:
            all_el = np.concatenate(elig_mem if after_rules else pool_mem)
            threshold = kth_largest(all_el, k)
            del all_el
        else:

            def eligible_scores() -> Iterator[np.ndarray]:
                for b, o in _stream(inputs, cfg, scan_rules):
                    yield b.score[_eligible(o, after_rules)]

            cut = kth_largest_bounded(eligible_scores, k, hist_elig, collect_cap=cfg.collect_cap)
            threshold = cut.threshold
            passes += cut.passes
    elig_mem.clear()

    # Pass 3: decide and write.
    staging = make_staging(out)
    try:
        result_info = _decide_and_write(inputs, cfg, rules, staging, threshold, bounded)
        passes += 1
        kept, subset_size, counts_first, counts_all, kept_by_score, ties = result_info
        if n_total == 0:
            warnings.append("the input has no rows: wrote an empty subset")
        elif kept == 0:
            warnings.append("no row was kept: the subset is empty")
        if n_invalid:
            warnings.append(
                f"{n_invalid:,} rows with status ok have a null, NaN or out-of-range score: "
                "dropped as invalid_score"
            )
        if bounded:
            quantiles = quantiles_from_hist(hist_pool, rep.QUANTILES)
            q_method = f"histogram of {n_bins} bins (within {2 / n_bins:.1e})"
        else:
            allp = np.concatenate(pool_mem) if pool_mem else np.empty(0)
            quantiles = (
                {
                    f"p{round(q * 100):g}": float(v)
                    for q, v in zip(rep.QUANTILES, np.quantile(allp, rep.QUANTILES), strict=True)
                }
                if len(allp)
                else {}
            )
            q_method = "exact"
            del allp
        pool_mem.clear()
        names = {
            "subset": "subset.npy",
            "decisions": "decisions.parquet",
            "report_json": "report.json",
            "report_md": "report.md",
            "score_hist": "score_hist.png" if cfg.plot else None,
        }
        report: dict[str, Any] = {
            "vlcurate_version": __version__,
            "inputs": {
                "files": [str(f) for f in inputs.files],
                "form": inputs.form,
                "score_column": inputs.columns.score,
                "summary_json": str(inputs.summary_json) if inputs.summary_json else None,
                "problems": problems,
            },
            "selection": {
                "mode": "top_fraction" if top else "threshold",
                "threshold_requested": cfg.threshold,
                "top_fraction": cfg.top_fraction,
                "fraction_of": cfg.fraction_of if top else None,
                "description": _describe(cfg),
                "tie_rule": TIE_RULE if top else "score >= threshold (float64 comparison)",
                "eligible": n_elig,
                "target_k": k,
                "kept_by_score": kept_by_score,
                "ties_at_cut": ties,
            },
            "rules": {
                "basic": cfg.basic,
                "min_words": rules.min_words,
                "min_chars": rules.min_chars,
                "min_side": rules.min_side,
                "max_aspect": rules.max_aspect,
                "missing_size": rules.missing_size,
                "language": "not applied",
                "language_note": rep.LANGUAGE_NOTE,
            },
            "threshold": threshold,
            "total": n_total,
            "valid": n_valid,
            "kept": kept,
            "kept_share": kept / n_total if n_total else 0.0,
            "subset_size": subset_size,
            "counts_by_reason": dict(sorted(counts_first.items(), key=lambda kv: (-kv[1], kv[0]))),
            "counts_by_rule": dict(sorted(counts_all.items(), key=lambda kv: (-kv[1], kv[0]))),
            "quantiles": quantiles,
            "quantiles_method": q_method,
            "bounded_memory": bounded,
            "memory_budget_mb": cfg.memory_budget_mb,
            "passes": passes,
            "elapsed_s": round(time.perf_counter() - t0, 3),
            "outputs": {k_: v for k_, v in names.items() if v},
            "warnings": warnings,
        }
        rep.write_json(staging / "report.json", report)
        (staging / "report.md").write_text(rep.render_markdown(report))
        if cfg.plot:
            rep.plot_histogram(staging / "score_hist.png", hist_pool, threshold, kept, n_total)
        commit(staging, out, cfg.overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise

    counts_by_reason = dict(report["counts_by_reason"])
    return FilterResult(
        kept=kept,
        total=n_total,
        threshold=threshold,
        counts_by_reason=counts_by_reason,
        out_dir=out,
        subset_path=out / "subset.npy",
        decisions_path=out / "decisions.parquet",
        report_json_path=out / "report.json",
        report_md_path=out / "report.md",
        hist_png_path=out / "score_hist.png" if cfg.plot else None,
        subset_size=subset_size,
        eligible=n_elig,
        target_k=k,
        bounded_memory=bounded,
        input_form=inputs.form,
        score_column=inputs.columns.score,
        warnings=warnings,
        input_problems=problems,
    )


def _decide_and_write(
    inputs: InputSet,
    cfg: FilterConfig,
    rules: RuleSettings,
    staging: Path,
    threshold: float | None,
    bounded: bool,
) -> tuple[int, int, Counter[str], Counter[str], int, int]:
    """The last pass: per-row verdicts to decisions.parquet, kept uids to subset.npy."""
    counts_first: Counter[str] = Counter()
    counts_all: Counter[str] = Counter()
    kept = kept_by_score = ties = 0
    lbl = score_label(threshold) if threshold is not None else ""
    spool = PairSpool(staging / "subset.pairs.tmp") if bounded else None
    kept_uids: list[str] = []
    writer = pq.ParquetWriter(staging / "decisions.parquet", DECISIONS_SCHEMA)
    try:
        for b, o in _stream(inputs, cfg, rules):
            n = len(b)
            if threshold is not None:
                above = o.valid & (b.score >= threshold)
                score_fail = o.valid & ~above
                kept_by_score += int(above.sum())
                ties += int((o.valid & (b.score == threshold)).sum())
            else:
                above = o.valid
                score_fail = None
            keep = above & o.rules_pass
            kept += int(keep.sum())
            first, allr = reason_columns(o, score_fail, lbl)
            for v in pc.value_counts(first).to_pylist():
                counts_first[v["values"]] += v["counts"]
            flat = pc.list_flatten(allr)
            if len(flat):
                for v in pc.value_counts(flat).to_pylist():
                    counts_all[v["values"]] += v["counts"]
            keep_arr = pa.array(keep, pa.bool_())
            kept_u = b.uid.filter(keep_arr)
            if spool is not None:
                spool.append(uid_pairs(kept_u))
            else:
                kept_uids.extend(kept_u.to_pylist())
            score_arr = pa.array(b.score, pa.float64(), mask=b.score_null)
            shard = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(n, dtype=np.int32)), pa.array([b.shard])
            ).cast(pa.string())
            writer.write_batch(
                pa.record_batch([b.uid, score_arr, keep_arr, first, allr, shard], schema=DECISIONS_SCHEMA)
            )
    except BaseException:
        if spool is not None:
            spool.abort()
        raise
    finally:
        writer.close()
    if spool is not None:
        subset_size = spool.finish(staging / "subset.npy")
    else:
        subset_size = len(write_subset(staging / "subset.npy", kept_uids))
    counts_first.pop("", None)  # kept rows have an empty reason
    return kept, subset_size, counts_first, counts_all, kept_by_score, ties
