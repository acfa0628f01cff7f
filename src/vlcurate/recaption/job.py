"""`vlcurate recaption`: the shard loop, run directory, resume and summary.

    OUT/run.json                 scorer (name, fingerprint), VLM model, settings (checked on resume)
    OUT/captions/NAME.parquet    one table per input shard, keyed by uid (see table.py)
    OUT/done/NAME.json           marker, written last: counts, histograms, requests, complete flag
    OUT/summary.json             merged over every shard
    OUT/report.md, report.html   the same for people, with OUT/scores_before_after.png

A shard counts as done when its marker says complete: every pair has a result, and none ended
with a VLM error or an unspent budget. Others are redone by the next run; the VLM response cache
makes the pairs that already succeeded cost nothing.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from vlcurate.base.atomic import write_json_atomic, write_parquet_atomic
from vlcurate.base.progress import ScoreProgress
from vlcurate.base.records import Sample, Status
from vlcurate.io.fetch import resolve_images
from vlcurate.io.shards import ShardReadError, ShardRef
from vlcurate.io.sources import open_source
from vlcurate.models.tiny_synth_check import SynthWorldCheck
from vlcurate.recaption.config import RecaptionConfig
from vlcurate.recaption.iterate import Budget, PairOutcome, Recaptioner, Send
from vlcurate.recaption.report import merge, run_problems, shard_stats, write_recaption_report
from vlcurate.recaption.scoring import CaptionScorer
from vlcurate.recaption.table import outcomes_table


class RecaptionMismatchError(RuntimeError):
    """The output directory holds a run scored with another model; resuming would mix scores."""


class RecaptionDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.captions = self.root / "captions"
        self.done = self.root / "done"

    def create(self) -> None:
        for d in (self.root, self.captions, self.done):
            d.mkdir(parents=True, exist_ok=True)
            for tmp in d.glob("*.tmp"):
                tmp.unlink(missing_ok=True)  # left by a killed run

    def table(self, shard: str) -> Path:
        return self.captions / f"{shard}.parquet"

    def marker(self, shard: str) -> Path:
        return self.done / f"{shard}.json"

    def marker_data(self, shard: str) -> dict[str, Any] | None:
        import json

        p = self.marker(shard)
        if not p.exists() or not self.table(shard).exists():
            return None
        try:
            return dict(json.loads(p.read_text()))
        except (OSError, ValueError):
            return None

    def is_done(self, shard: str, retry_incomplete: bool) -> bool:
        m = self.marker_data(shard)
        return m is not None and (bool(m.get("complete")) or not retry_incomplete)


def _run_info(input_spec: str | list[str], cfg: RecaptionConfig, scorer: Any) -> dict[str, Any]:
    settings = cfg.model_dump(exclude={"vlm", "progress", "budget_requests", "chunk_size", "batch_size"})
    return {
        "input": input_spec,
        "scorer": {"name": scorer.name, "fingerprint": scorer.fingerprint},
        "vlm": {"base_url": cfg.vlm.base_url, "model": cfg.vlm.model},
        "settings": settings,
    }


def _check_run(run: RecaptionDir, info: dict[str, Any]) -> None:
    import json

    path = run.root / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        if old.get("scorer", {}).get("fingerprint") != info["scorer"]["fingerprint"]:
            raise RecaptionMismatchError(
                f"{run.root} holds captions scored with {old.get('scorer', {}).get('name')!r}; this run "
                f"scores with {info['scorer']['name']!r} (another fingerprint). Use another --out."
            )
        return
    write_json_atomic(path, info)


def _chunks(samples: list[Sample], size: int) -> list[list[Sample]]:
    return [samples[i : i + size] for i in range(0, len(samples), size)]


def _read_shard(source: Any, shard: ShardRef) -> tuple[list[Sample], str | None, int]:
    """Every readable sample of a shard (first of each uid), the read error if any, duplicates."""
    out: list[Sample] = []
    seen: set[str] = set()
    dup = 0
    error = None
    try:
        for s in source.iter_samples(shard):
            if s.uid in seen:
                dup += 1
                continue
            seen.add(s.uid)
            out.append(s)
    except ShardReadError as exc:
        error = str(exc)
    return out, error, dup


def _recaption_shard(
    rc: Recaptioner, samples: list[Sample], cfg: RecaptionConfig, tick: Any
) -> list[PairOutcome]:
    outcomes: list[PairOutcome] = []
    for chunk in _chunks(samples, cfg.chunk_size):
        if any(s.image is None and s.image_ref for s in chunk):
            chunk = resolve_images(chunk)
        # A pair without a caption is the best case for recaptioning, not a failure.
        statuses = [
            ("ok", None)
            if s.status in (Status.OK, Status.MISSING_TEXT)
            else (str(s.status.value), s.error or str(s.status.value))
            for s in chunk
        ]
        outcomes += rc.run(
            [s.uid for s in chunk], [s.image for s in chunk], [s.text for s in chunk], statuses
        )
        tick(len(chunk))
    return outcomes


def recaption_dataset(
    input_spec: str | list[str],
    out_dir: str | Path,
    cfg: RecaptionConfig,
    *,
    retry_incomplete: bool = True,
    send: Send | None = None,
    source_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Recaption every shard of `input_spec` into `out_dir`; returns the summary (also summary.json).

    `send` replaces the VLM transport (default: `run_many` with `cfg.vlm`); tests and embedders use it.
    `source_options` go to `open_source` (kind, column names, ...: the `@data_options` flags).
    """
    from vlcurate.models.loader import load_scorer
    from vlcurate.recaption.mentions import get_extractor
    from vlcurate.vlm.client import run_many

    started = time.perf_counter()
    source = open_source(input_spec, **(source_options or {}))
    shards = source.shards()
    names = [s.name for s in shards]
    if len(set(names)) != len(names):
        raise ValueError("two input shards map to the same output name; give inputs distinct names")
    extractor = get_extractor(cfg.mentions) if cfg.mentions else None
    run = RecaptionDir(out_dir)
    run.create()
    pending = [s for s in shards if not run.is_done(s.name, retry_incomplete)]
    clip = load_scorer(
        cfg.scorer, device=cfg.device, precision=cfg.precision, allow_download=cfg.allow_download
    )
    _check_run(run, _run_info(input_spec, cfg, clip))
    transport: Send = send if send is not None else (lambda reqs: run_many(cfg.vlm, reqs))
    budget = Budget(cfg.budget_requests)
    rc = Recaptioner(cfg, CaptionScorer(clip, cfg.batch_size), transport, budget, extractor)
    synth_check = SynthWorldCheck.for_scorer(clip)
    pairs_done = 0
    t0 = time.perf_counter()
    label = "recaption"
    with ScoreProgress(
        enabled=cfg.progress, total_shards=len(pending), done_before=len(shards) - len(pending), label=label
    ) as bar:

        def tick(n: int) -> None:
            nonlocal pairs_done
            pairs_done += n
            bar.update_pairs(pairs_done, time.perf_counter() - t0)

        for shard in pending:
            t_shard = time.perf_counter()
            samples, read_error, dup = _read_shard(source, shard)
            _warn_off_world(synth_check, samples)
            before = rc.usage.requests
            outcomes = _recaption_shard(rc, samples, cfg, tick)
            table = outcomes_table(outcomes, [s.key for s in samples])
            write_parquet_atomic(run.table(shard.name), table)
            stats = shard_stats(table)
            marker = {
                "shard": shard.name,
                "complete": stats["retry"] == 0 and read_error is None,
                "read_error": read_error,
                "duplicates": dup,
                "requests_sent": rc.usage.requests - before,
                "seconds": round(time.perf_counter() - t_shard, 3),
                **stats,
            }
            write_json_atomic(run.marker(shard.name), marker)
            bar.shard_done(table.num_rows)
            if read_error:
                bar.shard_failed(shard.name, read_error)
    message = synth_check.finish()  # fewer images than the sample: decide with what was seen
    if message:
        print(f"warning: {message}", file=sys.stderr, flush=True)
    return _write_summary(run, shards, rc, budget, input_spec, time.perf_counter() - started, pairs_done)


def _warn_off_world(check: SynthWorldCheck, samples: list[Sample]) -> None:
    """tiny-synth as the scorer of photos: say once that its scores mean nothing there (as
    `vlcurate score` does), from the images' sizes (their headers only)."""
    import io

    from PIL import Image

    for s in samples:
        if check.decided:
            return
        ref = s.image_ref if s.image is None else None
        if s.image is None and not (ref and "://" not in ref and Path(ref).is_file()):
            continue  # a URL: not fetched for this
        try:
            with Image.open(io.BytesIO(s.image) if s.image is not None else str(ref)) as im:
                w, h = im.size
        except Exception:
            continue
        message = check.add(w, h)
        if message:
            print(f"warning: {message}", file=sys.stderr, flush=True)


def _write_summary(
    run: RecaptionDir,
    shards: list[ShardRef],
    rc: Recaptioner,
    budget: Budget,
    input_spec: str | list[str],
    wall: float,
    pairs_this_run: int,
) -> dict[str, Any]:
    markers = [m for m in (run.marker_data(s.name) for s in shards) if m is not None]
    merged = merge(markers)
    hist = merged.pop("_histogram")
    incomplete = [
        {"shard": m["shard"], "retry": m.get("retry", 0), "read_error": m.get("read_error")}
        for m in markers
        if not m.get("complete")
    ]
    summary: dict[str, Any] = {
        "out": str(run.root),
        "input": input_spec,
        "shards_total": len(shards),
        "shards_done": sum(bool(m.get("complete")) for m in markers),
        "incomplete_shards": incomplete,
        **merged,
        "this_run": {
            "pairs": pairs_this_run,
            "seconds": round(wall, 2),
            "pairs_per_s": round(pairs_this_run / wall, 2) if wall > 0 else None,
            "budget_requests": budget.limit,
            "budget_spent": budget.spent,
            "pairs_stopped_by_budget": rc.budget_stops,
            **rc.usage.as_dict(),
        },
        "histogram_png": str(run.root / "scores_before_after.png"),
    }
    summary["problems"] = run_problems(summary)
    summary["complete"] = not summary["problems"]
    write_recaption_report(run.root, summary, hist)
    write_json_atomic(run.root / "summary.json", summary)
    return summary
