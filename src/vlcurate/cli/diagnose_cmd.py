"""`vlcurate diagnose RUN --out DIAG`: attribute the failures of an evaluation run, rank weaknesses."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import EXIT_PARTIAL, fail, user_errors


def register(app: typer.Typer) -> None:
    app.command("diagnose")(diagnose_cmd)


def diagnose_cmd(
    run: Annotated[Path, typer.Argument(help="an evaluation run folder (written by `vlcurate eval`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for diagnosis.json and report.html")],
    endpoint: Annotated[
        str | None,
        typer.Option(help="OpenAI-compatible base URL to re-ask failures (default: the run's own endpoint)"),
    ] = None,
    model: Annotated[str | None, typer.Option(help="model name at --endpoint (default: the run's)")] = None,
    api_key: Annotated[str | None, typer.Option(help="API key for --endpoint")] = None,
    train: Annotated[
        str | None,
        typer.Option(
            help="the training pool: an instruction-data file or folder, a version store "
            "(its main version) or STORE@VERSION"
        ),
    ] = None,
    probe: Annotated[
        bool, typer.Option("--probe/--no-probe", help="re-ask wrong answers (describe, then answer)")
    ] = True,
    scorer: Annotated[
        str, typer.Option(help="CLIP-style scorer for the embeddings, or 'none'")
    ] = "tiny-synth",
    device: Annotated[str, typer.Option(help="device of the scorer")] = "cpu",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Attribute every failure (perception, reasoning, format, refusal), cluster failures, check the
    training data's coverage and labels, and rank the weaknesses."""
    from vlcurate.evals.config import api_base
    from vlcurate.metabolism.diagnose import DiagnoseOptions, diagnose, run_settings
    from vlcurate.metabolism.diagnosis import DiagnosisError
    from vlcurate.metabolism.trainpool import load_train_pool
    from vlcurate.vlm.client import VLMSettings

    with user_errors(DiagnosisError):
        settings = None
        if endpoint or model:
            base = None
            if not endpoint:
                from vlcurate.evals.results import load_run

                base = run_settings(load_run(run))
                if base is None:
                    raise fail("--model without --endpoint: the run names no endpoint")
            settings = VLMSettings(
                base_url=api_base(endpoint) if endpoint else base.base_url,  # type: ignore[union-attr]
                model=model or (base.model if base else "tiny-synth"),
                api_key=api_key,
                max_retries=1,
                timeout_s=30.0,
            )
        pool = load_train_pool(train) if train else None
        diag = diagnose(
            run,
            out,
            DiagnoseOptions(
                settings=settings,
                probe=probe,
                scorer=None if scorer.lower() == "none" else scorer,
                device=device,
                train=pool,
                train_source=train,
                progress=not quiet,
            ),
        )
    console = Console()
    acc = f"{diag.accuracy:.1%}" if diag.accuracy is not None else "-"
    console.print(
        f"{diag.failures} failures of {diag.answers} answers (accuracy {acc}); attribution: "
        + ", ".join(f"{k} {v}" for k, v in diag.attribution.items()),
        highlight=False,
    )
    table = Table("id", "kind", "weakness", "score", "failures", "training")
    for w in diag.weaknesses[:10]:
        cov = "-" if w.coverage is None else ("thin" if w.coverage.thin else "ok")
        table.add_row(w.id, w.kind, w.label, f"{w.score:.2f}", f"{w.failures}/{w.n}", cov)
    if diag.weaknesses:
        console.print(table)
    else:
        console.print("no weakness: no slice fails more than the rest of the run")
    console.print(f"wrote {out / 'diagnosis.json'} and {out / 'report.html'}", highlight=False)
    for line in diag.warnings:
        Console(stderr=True).print(f"[yellow]warning:[/] {line}", highlight=False)
    if diag.probe_errors and not diag.probed:
        raise typer.Exit(EXIT_PARTIAL)
