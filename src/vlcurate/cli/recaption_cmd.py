"""`vlcurate recaption`: better captions from a VLM, scored by the DVA scorer, chosen with a margin.

Exit status (see `vlcurate.cli.errors`): 0 when every shard is complete and every pair has its
final caption; `EXIT_PARTIAL` (3) when a shard broke part way, pairs are left to retry (VLM
errors, a spent --budget-requests) or an image could not be read; 2 for usage errors.
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
def recaption(
    inputs: Annotated[
        list[str],
        typer.Argument(help="shards (path, glob, brace pattern, fsspec URL), parquet, folder or manifest"),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory (resumes if it exists)")],
    vlm_url: Annotated[
        str, typer.Option(help="OpenAI-compatible base URL (vLLM, SGLang, Ollama, `vlcurate vlm serve` ...)")
    ] = "http://127.0.0.1:8300/v1",
    vlm_model: Annotated[str, typer.Option(help="model name the server knows")] = "tiny-synth",
    vlm_api_key: Annotated[
        str | None, typer.Option(help="API key (default: env VLCURATE_VLM_API_KEY or OPENAI_API_KEY)")
    ] = None,
    concurrency: Annotated[int, typer.Option(help="most VLM requests in flight")] = 16,
    timeout: Annotated[float, typer.Option(help="seconds per VLM request attempt")] = 60.0,
    scorer: Annotated[str, typer.Option(help="DVA scorer (`vlcurate models`)")] = "tiny-synth",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N] for the scorer")] = "auto",
    k: Annotated[int, typer.Option("--k", help="sampled candidates per pair (one request with n=K)")] = 4,
    style: Annotated[str, typer.Option(help="short | detailed")] = "short",
    max_words: Annotated[int | None, typer.Option(help="ask for captions of at most N words")] = None,
    temperature: Annotated[float, typer.Option(help="sampling temperature (> 0)")] = 0.8,
    fuse: Annotated[bool, typer.Option("--fuse/--no-fuse", help="merge original and best sample")] = True,
    rounds: Annotated[int, typer.Option(help="rewrite-with-feedback rounds at most")] = 3,
    margin: Annotated[
        float, typer.Option(help="replace the original only when a candidate beats it by more than this")
    ] = 0.12,
    budget_requests: Annotated[
        int | None, typer.Option(help="VLM requests this run may send (weakest pairs first)")
    ] = None,
    cache_dir: Annotated[
        str | None, typer.Option(help="VLM response cache folder (default: OUT/vlm-cache; 'none' = off)")
    ] = None,
    mentions: Annotated[
        str, typer.Option(help="mention extractor for feedback: synth, module:function, or none")
    ] = "synth",
    retry_incomplete: Annotated[
        bool,
        typer.Option("--retry-incomplete/--no-retry-incomplete", help="redo shards with VLM errors"),
    ] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
    *,
    source_options: dict[str, Any],
) -> None:
    """Generate, score, fuse and rewrite captions; keep the original unless a candidate clearly beats it."""
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError
    from vlcurate.recaption import RecaptionConfig, recaption_dataset
    from vlcurate.recaption.job import RecaptionMismatchError
    from vlcurate.vlm.client import VLMSettings

    with user_errors(WeightsNotFoundError, UnknownModelError, RecaptionMismatchError):
        cache = None if (cache_dir or "").lower() == "none" else (cache_dir or str(out / "vlm-cache"))
        settings = VLMSettings(
            base_url=vlm_url,
            model=vlm_model,
            api_key=vlm_api_key,
            max_concurrency=concurrency,
            timeout_s=timeout,
            cache_dir=cache,
        )
        cfg = RecaptionConfig.model_validate(
            {
                "vlm": settings,
                "scorer": scorer,
                "device": device,
                "k": k,
                "style": style,
                "max_words": max_words,
                "temperature": temperature,
                "fuse": fuse,
                "rounds": rounds,
                "margin": margin,
                "budget_requests": budget_requests,
                "mentions": None if mentions.lower() == "none" else mentions,
                "progress": not quiet,
            }
        )
        summary = recaption_dataset(
            inputs if len(inputs) > 1 else inputs[0],
            out,
            cfg,
            retry_incomplete=retry_incomplete,
            source_options=source_options,
        )
    print_summary(summary)
    problems = summary.get("problems") or []
    assert isinstance(problems, list)
    for p in problems:
        err_console.print(f"[yellow]incomplete:[/] {p}", highlight=False, soft_wrap=True)
    if problems:
        err_console.print(
            f"exit status {EXIT_PARTIAL}: finished, but not every pair got its final caption", highlight=False
        )
        raise typer.Exit(EXIT_PARTIAL)


def print_summary(summary: dict[str, object]) -> None:
    """The score distribution before and after, what was chosen, and what it cost."""
    run = summary["this_run"]
    assert isinstance(run, dict)
    t = Table(title="vlcurate recaption", show_header=False)
    t.add_row("shards", f"{summary['shards_done']}/{summary['shards_total']} done")
    t.add_row("pairs", f"{summary['pairs']:,}  by status {json.dumps(summary['counts_by_status'])}")
    t.add_row("chosen", f"{json.dumps(summary['chosen_origin'])}  ({summary['replaced']:,} replaced)")
    t.add_row("mean score", f"{summary['mean_score_before']} -> {summary['mean_score_after']}")
    qb, qa = summary["quantiles_before"], summary["quantiles_after"]
    assert isinstance(qb, dict) and isinstance(qa, dict)
    for q in qb:
        t.add_row(f"score {q}", f"{qb[q]} -> {qa[q]}")
    budget = f" of {run['budget_requests']:,}" if run.get("budget_requests") is not None else ""
    t.add_row(
        "this run",
        f"{run['pairs']:,} pairs in {run['seconds']} s; {run['requests']:,}{budget} requests "
        f"({run['cached']:,} cached, {run['failed']:,} failed)",
    )
    incomplete = summary.get("incomplete_shards") or []
    if incomplete:
        assert isinstance(incomplete, list)
        t.add_row(
            "[yellow]incomplete[/]",
            "; ".join(f"{s['shard']}: {s['retry']} pairs to retry" for s in incomplete)
            + " (re-run to resume)",
        )
    t.add_row("output", f"{summary['out']}/captions/*.parquet, summary.json, {summary['histogram_png']}")
    console.print(t)


def register(app: typer.Typer) -> None:
    app.command("recaption")(recaption)
