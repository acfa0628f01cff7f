"""`vlcurate run RECIPE.yaml` and `vlcurate ops`: curation recipes and the operators they chain."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlcurate.cli.data_options import data_options
from vlcurate.cli.errors import EXIT_PARTIAL, fail, user_errors
from vlcurate.io.shards import ShardReadError

if TYPE_CHECKING:
    from vlcurate.ops.engine import RunResult

_err = Console(stderr=True)


def register(app: typer.Typer) -> None:
    @app.command("run")
    @data_options
    def run_command(
        recipe: Annotated[str, typer.Argument(help="A YAML recipe: source, steps, sink.")],
        engine: Annotated[
            str, typer.Option(help="local (this machine) or ray (Ray Data: a local instance or a cluster).")
        ] = "local",
        address: Annotated[
            str | None,
            typer.Option(
                help="--engine ray: 'auto' (the cluster this machine belongs to) or 'ray://HOST:PORT'; "
                "default: start a local Ray instance."
            ),
        ] = None,
        num_cpus: Annotated[
            int | None,
            typer.Option(min=1, help="--engine ray, local instance: CPUs to give it (default all)."),
        ] = None,
        check: Annotated[
            bool,
            typer.Option(
                "--check",
                help="Validate the recipe, open the input and load each step's models and files, "
                "then stop without running.",
            ),
        ] = False,
        input_path: Annotated[
            str | None,
            typer.Option("--input", help="Read this input instead of the recipe's source.input."),
        ] = None,
        out: Annotated[
            str | None, typer.Option("--out", help="Write into this folder instead of the recipe's sink.out.")
        ] = None,
        retry_failed: Annotated[
            bool,
            typer.Option(
                "--retry-failed",
                help="Load again the finished shards where pairs failed to download (HTTP errors, "
                "timeouts, network errors), and re-run what depends on them.",
            ),
        ] = False,
        *,
        source_options: dict[str, Any],
    ) -> None:
        """Run a curation recipe: every step marks pairs to drop with a reason; the sink keeps the rest.

        Exit codes: 0 all done; 3 the run finished but some shards or pairs failed (listed; a re-run
        retries the shards that gave nothing); 2 a recipe, input or step that cannot be used."""
        from vlcurate.ops.recipe import RecipeError, load_recipe

        try:
            rec = load_recipe(recipe).with_overrides(input=input_path, out=out, source_options=source_options)
        except RecipeError as exc:
            raise fail(str(exc)) from None
        if engine not in ("local", "ray"):
            raise fail(f"unknown engine {engine!r}; expected local or ray")
        if engine == "local" and (address is not None or num_cpus is not None):
            raise fail("--address and --num-cpus are options of --engine ray")
        if check:
            from vlcurate.ops.engine import check_recipe

            problems = check_recipe(rec)
            for line in problems[:-1]:
                _err.print(f"[bold red]error:[/] {escape(line)}", highlight=False, soft_wrap=True)
            if problems:
                raise fail(escape(f"{recipe}: {problems[-1]}"))
            typer.echo(f"{recipe}: valid ({len(rec.steps)} steps: {', '.join(s.op for s in rec.steps)})")
            return
        if engine == "ray":
            from vlcurate.ops.engine_ray import RayEngineError, run_recipe_ray

            with user_errors(RayEngineError, ShardReadError):
                result = run_recipe_ray(rec, address=address, num_cpus=num_cpus, retry_failed=retry_failed)
        else:
            from vlcurate.ops.base import StepError
            from vlcurate.ops.engine_local import run_recipe

            with user_errors(ShardReadError, StepError):
                result = run_recipe(rec, progress=True, retry_failed=retry_failed)
        _print_result(recipe, result)
        if result.partial:
            raise typer.Exit(EXIT_PARTIAL)

    @app.command("ops")
    def ops_command(
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                help="table (for people), json (for scripts) or markdown (the documentation's page).",
            ),
        ] = "table",
    ) -> None:
        """List every operator with its kind, what it does and its parameters.

        Example: vlcurate ops --format json | jq '.[].name'"""
        from vlcurate.ops.catalogue import catalogue, catalogue_markdown

        if fmt not in ("table", "json", "markdown"):
            raise fail(f"unknown format {fmt!r}; expected table, json or markdown")
        entries = catalogue()
        if fmt == "json":
            import json

            typer.echo(json.dumps(entries, indent=2))
            return
        if fmt == "markdown":
            typer.echo(catalogue_markdown(entries), nl=False)
            return
        table = Table(show_lines=True)
        for col in ("operator", "kind", "what it does", "parameters"):
            table.add_column(col)
        for e in entries:
            params = []
            for prm in e["params"]:
                default = "required" if prm["required"] else f"= {prm['default']!r}"
                params.append(f"{prm['name']} ({default}): {prm['description']}".rstrip(": "))
            table.add_row(e["name"], e["kind"], escape(e["doc"]), escape("\n".join(params)))
        Console(width=140).print(table)


def _this_run(ran: int, reused: int) -> str:
    if not ran and not reused:
        return "-"
    if not reused:
        return "ran"
    return "reused" if not ran else f"ran {ran}, reused {reused} shards"


def _print_result(recipe: str, result: RunResult) -> None:
    """The per-step table (with which steps ran and which were reused), failures and where outputs are."""
    typer.echo(f"{recipe}: {result.kept:,} of {result.rows:,} pairs kept")  # one line, never wrapped
    table = Table()
    for col in ("step", "saw", "kept", "dropped", "seconds", "this run"):
        table.add_column(col, justify="left" if col in ("step", "this run") else "right")
    runs = [_this_run(st.ran, st.reused) for st in result.stages for _ in st.steps]
    for s, how in zip(result.steps, runs, strict=True):
        table.add_row(s.op, f"{s.saw:,}", f"{s.kept:,}", f"{s.dropped:,}", f"{s.seconds:.2f}", how)
    Console().print(table)
    reused = [name for st in result.stages if st.reused for name in st.steps]
    if reused:
        typer.echo(
            f"reused from an earlier run (same input, steps, parameters and models): {', '.join(reused)}"
        )
    typer.echo(f"decisions: {result.out / 'decisions'}  subset: {result.subset}")
    typer.echo(f"report: {result.out / 'report.json'}")
    if result.instruct is not None:
        i = result.instruct
        typer.echo(
            f"instruction data: {i['path']} ({i['kept']} kept, {i['cot']} chain-of-thought "
            f"rewrites added, {i['dropped']} dropped: see dropped.jsonl)"
        )
    for shard, error in result.failed_shards.items():
        _err.print(
            f"[yellow]shard {escape(shard)} failed:[/] {escape(error)}", highlight=False, soft_wrap=True
        )
    if result.partial:
        _err.print(
            f"[yellow]warning:[/] {len(result.failed_shards)} shard(s) failed or were cut short and "
            f"{result.failed_pairs:,} pair(s) could not be loaded (see the report); "
            f"exit code {EXIT_PARTIAL}",
            highlight=False,
            soft_wrap=True,
        )
