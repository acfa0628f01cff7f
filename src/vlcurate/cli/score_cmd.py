"""`vlcurate score`: score every image-caption pair of a dataset with a CLIP-style model.

Exit status (see `vlcurate.cli.errors`): 0 when every shard is done and every pair has a score;
`EXIT_PARTIAL` (3) when a shard could not be read (or only partly) or a pair has no score (its
row says why); 2 for usage errors (bad options, unknown model, missing weights, no input).

A shard that broke part way (a truncated tar) is partial, not done: a re-run skips it while its file
is unchanged and reads it again once the file's size or mtime changed. `--retry-failed` fetches and
scores again the rows of finished shards whose download failed (status `fetch_error`: HTTP errors,
timeouts, network errors), rewriting each such shard's table with those rows replaced.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.data_options import data_options
from vlcurate.cli.errors import EXIT_PARTIAL, user_errors

console = Console()
err_console = Console(stderr=True)


@data_options
def score(
    inputs: Annotated[
        list[str],
        typer.Argument(help="shards (path, glob, brace pattern, fsspec URL), parquet, folder or manifest"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (resumes if it exists)")],
    model: Annotated[
        str, typer.Option(help="model name (`vlcurate models`); tiny-synth is bundled and works offline")
    ] = "dfn-b16",
    batch_size: Annotated[int, typer.Option(help="pairs per model call")] = 256,
    workers: Annotated[
        int | None, typer.Option(help="decode processes (default: all cores; 0: in-process)")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="auto | fp32 | bf16 | fp16 (auto: bf16 on CUDA and on CPUs with native bf16)")
    ] = "auto",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    save_embeddings: Annotated[
        bool, typer.Option("--save-embeddings", help="also write float16 image/text embeddings")
    ] = False,
    allow_download: Annotated[
        bool, typer.Option("--allow-download", help="let the model loader download weights")
    ] = False,
    fetch_concurrency: Annotated[int, typer.Option(help="parallel downloads for images given by URL")] = 32,
    fetch_timeout: Annotated[float, typer.Option(help="seconds per image download")] = 10.0,
    fetch_retries: Annotated[int, typer.Option(help="retries per image download")] = 2,
    torch_threads: Annotated[
        int | None, typer.Option(help="CPU threads for the model (default: all cores; 1 for small models)")
    ] = None,
    fast_decode: Annotated[
        bool,
        typer.Option(
            "--fast-decode", help="let JPEG decoding scale down to the model size (faster, ~3/255 off)"
        ),
    ] = False,
    retry_failed: Annotated[
        bool,
        typer.Option(
            "--retry-failed",
            help="fetch and score again the rows of finished shards whose download failed "
            "(HTTP error, timeout, network error); their tables are rewritten with those rows replaced",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    *,
    source_options: dict[str, Any],
) -> None:
    """Score image-caption pairs: cosine similarity in [-1, 1], one Parquet table per input shard."""
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError
    from vlcurate.score.config import ScoreConfig
    from vlcurate.score.job import RunMismatchError, score_dataset

    with user_errors(WeightsNotFoundError, UnknownModelError, RunMismatchError, RuntimeError):
        config = ScoreConfig.model_validate(
            {
                "model": model,
                "batch_size": batch_size,
                "workers": workers,
                "precision": precision,
                "device": device,
                "save_embeddings": save_embeddings,
                "allow_download": allow_download,
                "fetch_concurrency": fetch_concurrency,
                "fetch_timeout": fetch_timeout,
                "fetch_retries": fetch_retries,
                "fast_decode": fast_decode,
                "torch_threads": torch_threads,
                "retry_failed": retry_failed,
                "progress": not quiet,
                "source_options": source_options,
            }
        )
        summary = score_dataset(inputs if len(inputs) > 1 else inputs[0], out, config)
    print_summary(summary)
    code = exit_code(summary)
    if code:
        raise typer.Exit(code)


def exit_code(summary: dict[str, object]) -> int:
    """0 when the run is complete; else EXIT_PARTIAL, after one stderr line per problem."""
    problems = summary.get("problems") or []
    assert isinstance(problems, list)
    for p in problems:
        err_console.print(f"[yellow]incomplete:[/] {p}", highlight=False, soft_wrap=True)
    if not problems:
        return 0
    err_console.print(
        f"exit status {EXIT_PARTIAL}: finished, but not everything was scored "
        "(the score rows and summary.json say why)",
        highlight=False,
        soft_wrap=True,
    )
    return EXIT_PARTIAL


def print_summary(summary: dict[str, object]) -> None:
    """A short table of what a scoring run produced."""
    t = Table(title="vlcurate score", show_header=False)
    this_run = summary.get("this_run", {})
    assert isinstance(this_run, dict)
    model = summary.get("model", {})
    assert isinstance(model, dict)
    t.add_row("model", f"{model.get('name')} ({model.get('precision')}, {model.get('device')})")
    partial_n = int(summary.get("shards_partial") or 0)  # type: ignore[call-overload]
    t.add_row(
        "shards",
        f"{summary['shards_done']}/{summary['shards_total']} done"
        + (f", {partial_n} partial" if partial_n else ""),
    )
    t.add_row("pairs", f"{summary['pairs']:,}")
    t.add_row("by status", json.dumps(summary["counts_by_status"]))
    t.add_row(
        "this run",
        f"{this_run.get('pairs_this_run', 0):,} pairs at {this_run.get('pairs_per_s') or 0:,.1f} pairs/s",
    )
    q = summary.get("score_quantiles", {})
    assert isinstance(q, dict)
    t.add_row("score q05/q50/q95", f"{q.get('q05')} / {q.get('q50')} / {q.get('q95')}")
    retried = this_run.get("retried")
    if isinstance(retried, dict):
        t.add_row(
            "retried",
            f"{retried.get('rows', 0):,} failed rows in {retried.get('shards', 0)} shards, "
            f"{retried.get('now_ok', 0):,} now scored",
        )
    failed = this_run.get("failed_shards") or []
    if failed:
        t.add_row("[red]failed shards[/]", "; ".join(f"{f['shard']}: {f['error']}" for f in failed))
    partial = summary.get("partial_shards") or []
    if partial:
        assert isinstance(partial, list)
        t.add_row("[yellow]partial shards[/]", "; ".join(f"{p['shard']}: {p['error']}" for p in partial))
    t.add_row("output", f"{summary['out']}/scores/*.parquet, summary.json")
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("score")(score)
