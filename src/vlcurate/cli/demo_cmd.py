"""`vlcurate demo`: the whole job on bundled defaults, offline, in about a minute on two cores."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import fail

console = Console()


def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="working directory for the demo")] = Path(
        "demo-out"
    ),
    n: Annotated[int, typer.Option(help="pairs in the synthetic pool")] = 2000,
    corrupt_fraction: Annotated[float, typer.Option(help="share of captions corrupted on purpose")] = 0.3,
    keep_fraction: Annotated[
        float | None, typer.Option(help="top fraction to keep (default: 1 - corrupt share)")
    ] = None,
    model: Annotated[str, typer.Option(help="scoring model")] = "tiny-synth",
    seed: Annotated[int, typer.Option(help="seed of the synthetic pool")] = 1234,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Build a synthetic pool with known corrupted captions, score it, filter it, and grade the removal."""
    from vlcurate.io.reshard import reshard
    from vlcurate.ops.score_filter import run_filter
    from vlcurate.ops.score_filter_config import FilterConfig
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import score_dataset
    from vlcurate.synth.filter_eval import lowest_scored, removal_quality
    from vlcurate.synth.pool import write_pool

    if n < 10:
        raise fail("--n must be at least 10")
    if not 0.0 <= corrupt_fraction < 1.0:
        raise fail("--corrupt-fraction must be in [0, 1)")
    keep = keep_fraction if keep_fraction is not None else 1.0 - corrupt_fraction
    if not 0.0 < keep <= 1.0:
        raise fail("--keep-fraction must be in (0, 1]")
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    times: dict[str, float] = {}

    console.rule("[bold]1. synthetic pool")
    truth = write_pool(out / "pool", n, corrupt_fraction=corrupt_fraction, seed=seed, shard_size=500)
    times["pool"] = time.perf_counter() - t0
    console.print(
        f"{n} pairs in {len(list((out / 'pool' / 'shards').glob('*.tar')))} WebDataset shards, "
        f"{sum(truth.column('corrupted').to_pylist())} captions corrupted on purpose"
    )

    console.rule(f"[bold]2. score with {model}")
    t = time.perf_counter()
    summary = score_dataset(
        str(out / "pool" / "shards"), out / "scores", ScoreConfig(model=model, progress=not quiet)
    )
    times["score"] = time.perf_counter() - t
    console.print(
        f"{summary['pairs']} pairs scored at {summary['this_run']['pairs_per_s']} pairs/s "
        f"({summary['model']['precision']} on {summary['model']['device']})"
    )

    console.rule(f"[bold]3. filter: keep the top {keep:.0%}")
    t = time.perf_counter()
    result = run_filter(out / "scores", out / "filter", FilterConfig(top_fraction=keep))
    times["filter"] = time.perf_counter() - t
    console.print(
        f"kept {result.kept} of {result.total} (threshold {result.threshold:.4f}); "
        f"report: {result.report_md_path}, plot: {result.hist_png_path}"
    )

    console.rule("[bold]4. reshard the kept pairs")
    t = time.perf_counter()
    rs = reshard(
        str(out / "pool" / "shards"), result.subset_path, out / "kept-shards", samples_per_shard=1000
    )
    times["reshard"] = time.perf_counter() - t
    console.print(f"wrote {rs.get('written')} samples to {out / 'kept-shards'}")

    import pyarrow.parquet as pq

    quality = removal_quality(truth, pq.read_table(result.decisions_path))
    table = Table(title="What the filter removed, against the truth")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("pairs", f"{quality.total}")
    table.add_row("corrupted (truth)", f"{quality.corrupted}")
    table.add_row("removed", f"{quality.removed}")
    table.add_row("removed that were corrupted", f"{quality.removed_corrupted}")
    table.add_row("[bold]precision[/] (removed that were corrupted)", f"{quality.precision:.3f}")
    table.add_row("[bold]recall[/] (corrupted that were removed)", f"{quality.recall:.3f}")
    for kind, rec in quality.recall_by_kind.items():
        table.add_row(f"  recall: {kind} ({quality.counts_by_kind[kind]})", f"{rec:.3f}")
    console.print(table)
    ex = Table(title="Lowest-scored removed pairs")
    for col in ("score", "caption shown", "truth", "corruption"):
        ex.add_column(col)
    for row in lowest_scored(pq.read_table(result.decisions_path), truth, 5):
        ex.add_row(
            f"{row['score']:.3f}",
            str(row.get("caption")),
            str(row.get("true_caption")),
            str(row.get("corruption")),
        )
    console.print(ex)
    total = time.perf_counter() - t0
    report = {
        "pairs": quality.total,
        "corrupted": quality.corrupted,
        "removed": quality.removed,
        "precision": round(quality.precision, 4),
        "recall": round(quality.recall, 4),
        "recall_by_kind": {k: round(v, 4) for k, v in quality.recall_by_kind.items()},
        "threshold": result.threshold,
        "seconds": {k: round(v, 2) for k, v in times.items()} | {"total": round(total, 2)},
    }
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    console.print(f"done in {total:.1f} s; report in {out / 'demo_report.json'}")


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
