"""`vlcurate filter`: keep pairs by score and DataComp's basic rules; write a DataComp subset.

The command only turns flags into a `FilterConfig`, calls `vlcurate.ops.score_filter.run_filter`
(a recipe over the score tables) and prints a summary; bad input ends with a one-line error and
exit code 2. A run over a `vlcurate score` run directory whose shards are not all done (or some only
partly read) writes its outputs and exits with `EXIT_PARTIAL` (3): the subset lacks those shards' pairs.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import typer
from pydantic import ValidationError

from vlcurate.cli.errors import EXIT_PARTIAL

_FLAGS = {
    "threshold": "--threshold",
    "top_fraction": "--top-fraction",
    "fraction_of": "--fraction-of",
    "score_column": "--score-column",
    "min_words": "--min-words",
    "min_chars": "--min-chars",
    "min_side": "--min-side",
    "max_aspect": "--max-aspect",
    "missing_size": "--missing-size",
    "memory_budget_mb": "--memory-budget-mb",
}


class FractionOf(str, Enum):
    pool = "pool"
    after_rules = "after-rules"


class MissingSize(str, Enum):
    drop = "drop"
    keep = "keep"


def _validation_message(exc: ValidationError) -> str:
    """One line per pydantic error, named by the flag the user typed."""
    parts = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        msg = str(err.get("msg", "invalid value")).removeprefix("Value error, ")
        if loc:
            flag = _FLAGS.get(str(loc[0]), f"--{str(loc[0]).replace('_', '-')}")
            parts.append(f"{flag}: {msg} (got {err.get('input')!r})")
        else:
            parts.append(msg)
    return "; ".join(parts)


def _fail(message: str) -> None:
    typer.echo(f"Error: {message}", err=True)
    raise typer.Exit(2)


def filter_command(
    scores: list[str] = typer.Argument(
        ...,
        metavar="SCORES",
        help="A `vlcurate score` run dir (scores/*.parquet), score tables, a folder or glob of them, "
        "or DataComp pool metadata Parquet (auto-detected).",
        show_default=False,
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Output folder (must be empty or new).", show_default=False
    ),
    threshold: float | None = typer.Option(None, help="Keep score >= T (T in [-1, 1])."),
    top_fraction: float | None = typer.Option(
        None,
        help="Keep the global top fraction F in (0, 1] across all shards: k = ceil(F*N), the cut is "
        "the k-th largest score and every row tied with it is kept too.",
    ),
    fraction_of: FractionOf = typer.Option(
        FractionOf.pool,
        help="Take the top fraction of the whole pool (status ok, valid score; DataComp/DFN; then "
        "intersect with the rules) or of the rows that pass the rules.",
    ),
    score_column: str | None = typer.Option(
        None, help="Score column. Default `score`, or `clip_l14_similarity_score` for DataComp metadata."
    ),
    basic: bool = typer.Option(
        False,
        "--basic",
        help="DataComp's basic rules: caption > 2 words and > 5 characters, shorter side >= 200, "
        "aspect <= 3. DataComp's English language check is NOT applied here "
        "(it is the `language` operator of `vlcurate run`, as in recipes/datacomp_basic.yaml).",
    ),
    min_words: int | None = typer.Option(None, help="Drop captions with fewer words (--basic: 3)."),
    min_chars: int | None = typer.Option(None, help="Drop captions with fewer characters (--basic: 6)."),
    min_side: int | None = typer.Option(
        None, help="Drop images whose shorter side is below PX (--basic: 200)."
    ),
    max_aspect: float | None = typer.Option(
        None, help="Drop images with long/short side above R (--basic: 3)."
    ),
    missing_size: MissingSize = typer.Option(
        MissingSize.drop,
        help="Rows without width/height under a size rule: drop (reason missing:size) or keep.",
    ),
    bounded_memory: bool = typer.Option(
        False, "--bounded-memory", help="Stream with a fixed memory (exact; automatic above the budget)."
    ),
    memory_budget_mb: float = typer.Option(2048.0, help="Switch to the bounded mode above this estimate."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty --out folder."),
    plot: bool = typer.Option(True, "--plot/--no-plot", help="Write score_hist.png."),
) -> None:
    """Keep image-caption pairs by score and DataComp's basic rules; write subset.npy and reports."""
    from vlcurate.io.score_tables import ScoreTableError
    from vlcurate.io.staged_dir import OutputDirError
    from vlcurate.ops.base import StepError
    from vlcurate.ops.score_filter import run_filter
    from vlcurate.ops.score_filter_config import FilterConfig

    opts: dict[str, Any] = {
        "threshold": threshold,
        "top_fraction": top_fraction,
        "fraction_of": fraction_of.value,
        "score_column": score_column,
        "basic": basic,
        "min_words": min_words,
        "min_chars": min_chars,
        "min_side": min_side,
        "max_aspect": max_aspect,
        "missing_size": missing_size.value,
        "bounded_memory": bounded_memory,
        "memory_budget_mb": memory_budget_mb,
        "overwrite": overwrite,
        "plot": plot,
    }
    try:
        config = FilterConfig(**opts)
    except ValidationError as exc:
        _fail(_validation_message(exc))
        return
    try:
        result = run_filter(scores, out, config)
    except (ScoreTableError, OutputDirError, StepError) as exc:
        _fail(str(exc))
        return
    _print_summary(result)
    if result.input_problems:
        typer.echo(
            f"exit status {EXIT_PARTIAL}: the input's score run is incomplete; re-run `vlcurate score` "
            "on it, then filter again",
            err=True,
        )
        raise typer.Exit(EXIT_PARTIAL)


def _print_summary(result: Any) -> None:
    """A rich table: kept/total, the cut, drops per first failing reason, and where things went."""
    from rich.console import Console
    from rich.table import Table

    from vlcurate.ops.score_filter import LANGUAGE_NOTE

    console = Console()
    table = Table(title="vlcurate filter", show_header=True, header_style="bold")
    table.add_column("", style="cyan")
    table.add_column("value", justify="right")
    share = result.kept / result.total if result.total else 0.0
    table.add_row("input", f"{result.input_form} / {result.score_column}")
    table.add_row("rows", f"{result.total:,}")
    table.add_row("threshold", "none" if result.threshold is None else f"{result.threshold:.6g}")
    if result.target_k is not None:
        table.add_row("top-fraction target k", f"{result.target_k:,} of {result.eligible:,} eligible")
    table.add_row("kept", f"[bold green]{result.kept:,}[/] ({share:.2%})")
    for reason, n in result.counts_by_reason.items():
        table.add_row(f"dropped: {reason}", f"{n:,}")
    table.add_row("memory mode", "bounded" if result.bounded_memory else "in memory")
    table.add_row("subset", str(result.subset_path))
    console.print(table)
    for w in result.warnings:
        console.print(f"[yellow]warning:[/] {w}")
    console.print(f"[dim]note: {LANGUAGE_NOTE}. Report: {result.report_md_path}[/]")


_HELP = (
    "Keep image-caption pairs by score (--threshold, or an exact global --top-fraction) and DataComp's "
    "basic rules; write a DataComp subset.\n\n"
    "Outputs in --out: subset.npy (DataComp subset, sorted u8,u8), decisions.parquet (every uid with "
    "keep and the failing reasons), report.json, report.md and score_hist.png. "
    "DataComp's English language check is not applied by this command: use the `language` operator "
    "of `vlcurate run` (recipes/datacomp_basic.yaml).\n\n"
    f"Exit status: 0 done; {EXIT_PARTIAL} done, but the input is a score run with shards not done "
    "(their pairs are missing from the subset); 2 bad options or input."
)


def register(app: typer.Typer) -> None:
    """Add `filter` to the main app."""
    app.command("filter", help=_HELP)(filter_command)
