"""`vlcurate eval ENDPOINT BENCH --out RUN`: a VLM on a benchmark, per category with confidence intervals.

Exit codes: 0 every item answered; 3 (`EXIT_PARTIAL`) some requests failed for good (status
`error`; a re-run of the same command asks them again); 2 bad options or a bad benchmark file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import EXIT_PARTIAL, fail, user_errors


def _csv(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def register(app: typer.Typer) -> None:
    @app.command("eval")
    def eval_command(
        endpoint: Annotated[
            str, typer.Argument(help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8300/v1.")
        ],
        bench: Annotated[
            Path,
            typer.Argument(help="Benchmark: JSONL/JSON/CSV/TSV/Parquet or instruction data, or its folder."),
        ],
        out: Annotated[Path, typer.Option(help="Run folder (samples.jsonl, summary.json, report).")],
        model: Annotated[str, typer.Option(help="Model name the server serves.")] = "tiny-synth",
        repeats: Annotated[int, typer.Option(min=1, help="Answers per item (seed + repeat each).")] = 1,
        temperature: Annotated[float, typer.Option(min=0.0, max=2.0, help="Sampling temperature.")] = 0.0,
        seed: Annotated[int, typer.Option(help="Seed of the first repeat.")] = 0,
        concurrency: Annotated[int, typer.Option(min=1, help="Most requests in flight.")] = 16,
        limit: Annotated[int | None, typer.Option(min=1, help="Only the first N items.")] = None,
        image_root: Annotated[
            Path | None, typer.Option(help="Folder relative image paths are under (default: beside BENCH).")
        ] = None,
        category: Annotated[str | None, typer.Option(help="Only these categories (comma separated).")] = None,
        ids: Annotated[str | None, typer.Option(help="Only these item ids (comma separated).")] = None,
        image_mode: Annotated[
            str,
            typer.Option(help="image (default), none (question only) or description (answer from a text)."),
        ] = "image",
        description_from: Annotated[
            str,
            typer.Option(help="With --image-mode description: model (describe first) or bench (its field)."),
        ] = "model",
        prompt_prefix: Annotated[str, typer.Option(help="Text put before every question.")] = "",
        system: Annotated[str | None, typer.Option(help="System message.")] = None,
        max_tokens: Annotated[int, typer.Option(min=1, help="Most tokens per answer.")] = 256,
        timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request attempt.")] = 60.0,
        max_retries: Annotated[int, typer.Option(min=0, help="Retries of a failed request.")] = 6,
        api_key: Annotated[
            str | None, typer.Option(envvar="VLCURATE_VLM_API_KEY", help="Bearer token of the server.")
        ] = None,
        cache_dir: Annotated[
            str | None, typer.Option(help="Response cache folder (default: OUT/vlm-cache; 'none' = off).")
        ] = None,
        cache_tag: Annotated[
            str | None,
            typer.Option(
                help="The weights behind --model (a checkpoint or training round): answers cached under "
                "another tag are not reused when a retrained model is served under the same name."
            ),
        ] = None,
        judge_endpoint: Annotated[
            str | None, typer.Option(help="Judge server (default: ENDPOINT when --judge-model is set).")
        ] = None,
        judge_model: Annotated[
            str | None, typer.Option(help="Judge model, asked with structured output.")
        ] = None,
        judge_mode: Annotated[
            str,
            typer.Option(help="fallback (replies exact matching could not read or called wrong) or always."),
        ] = "fallback",
        judge_timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per judge attempt.")] = 30.0,
        caption_threshold: Annotated[
            float, typer.Option(min=0.0, max=1.0, help="Token F1 at which a caption counts as correct.")
        ] = 0.5,
        progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ) -> None:
        """Evaluate a VLM on a benchmark: exact answer extraction, optional judge, per-category accuracy with
        Wilson intervals, per-sample log; resumable and cached."""
        from vlcurate.evals.bench import BenchFileError
        from vlcurate.evals.config import EvalConfig
        from vlcurate.evals.results import RunFormatError
        from vlcurate.evals.runner import run_eval

        with user_errors(BenchFileError, RunFormatError):
            cache = None if (cache_dir or "").lower() == "none" else Path(cache_dir or out / "vlm-cache")
            config = EvalConfig(
                endpoint=endpoint,
                model=model,
                bench=str(bench),
                image_root=str(image_root) if image_root is not None else None,
                out=out,
                repeats=repeats,
                temperature=temperature,
                seed=seed,
                concurrency=concurrency,
                limit=limit,
                categories=_csv(category),
                ids=_csv(ids),
                image_mode=image_mode,
                description_from=description_from,
                prompt_prefix=prompt_prefix,
                system=system,
                max_tokens=max_tokens,
                timeout_s=timeout,
                max_retries=max_retries,
                api_key=api_key,
                cache_dir=cache,
                cache_tag=cache_tag,
                judge_endpoint=judge_endpoint,
                judge_model=judge_model,
                judge_mode=judge_mode,
                judge_timeout_s=judge_timeout,
                caption_threshold=caption_threshold,
            )
            summary = run_eval(config, progress=progress)
        table = Table(title=f"{model} on {bench}")
        for col in ("category", "n", "accuracy", "95% CI", "not scored"):
            table.add_column(col, justify="left" if col == "category" else "right")
        rows = [*summary.per_category.items(), ("overall", summary.overall)]
        for name, s in rows:
            acc = "-" if s.accuracy is None else f"{s.accuracy:.3f}"
            table.add_row(name, str(s.n), acc, f"{s.ci95[0]:.3f}-{s.ci95[1]:.3f}", str(s.unscored))
        console = Console()
        console.print(table)
        statuses = ", ".join(f"{k} {v}" for k, v in summary.status_counts.items())
        console.print(f"statuses: {statuses}; cache hits {summary.cache_hits}")
        console.print(f"run: {out / 'samples.jsonl'}, {out / 'summary.json'}, {out / 'report.html'}")
        errors = summary.status_counts.get("error", 0)
        if errors or not summary.complete:
            from collections import Counter

            from vlcurate.evals.results import load_run

            reasons = Counter(s.error or "" for s in load_run(out).samples if s.status == "error")
            top = "; ".join(f"{n}x {why}" for why, n in reasons.most_common(2))
            msg = f"{errors} item(s) failed with request errors ({top}); the same command retries them"
            raise fail(msg, EXIT_PARTIAL)
