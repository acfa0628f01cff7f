"""`vlcurate run RECIPE.yaml` and `vlcurate ops`: curation recipes and the operators they chain."""

from __future__ import annotations

from typing import Annotated

import typer
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from vlcurate.cli.errors import fail, user_errors
from vlcurate.io.shards import ShardReadError


def register(app: typer.Typer) -> None:
    @app.command("run")
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
        check: Annotated[bool, typer.Option("--check", help="Validate the recipe and stop.")] = False,
    ) -> None:
        """Run a curation recipe: every step marks pairs to drop with a reason; the sink keeps the rest."""
        from vlcurate.ops.recipe import RecipeError, load_recipe

        try:
            rec = load_recipe(recipe)
        except RecipeError as exc:
            raise fail(str(exc)) from None
        if check:
            typer.echo(f"{recipe}: valid ({len(rec.steps)} steps: {', '.join(s.op for s in rec.steps)})")
            return
        if engine not in ("local", "ray"):
            raise fail(f"unknown engine {engine!r}; expected local or ray")
        if engine == "local" and (address is not None or num_cpus is not None):
            raise fail("--address and --num-cpus are options of --engine ray")
        if engine == "ray":
            from vlcurate.ops.engine_ray import RayEngineError, run_recipe_ray

            with user_errors(RayEngineError, ShardReadError):
                result = run_recipe_ray(rec, address=address, num_cpus=num_cpus)
        else:
            from vlcurate.ops.base import StepError
            from vlcurate.ops.engine_local import run_recipe

            with user_errors(ShardReadError, StepError):
                result = run_recipe(rec, progress=True)
        table = Table(title=f"{recipe}: {result.kept:,} of {result.rows:,} pairs kept")
        for col in ("step", "saw", "kept", "dropped", "seconds"):
            table.add_column(col, justify="left" if col == "step" else "right")
        for s in result.steps:
            table.add_row(s.op, f"{s.saw:,}", f"{s.kept:,}", f"{s.dropped:,}", f"{s.seconds:.2f}")
        Console().print(table)
        typer.echo(f"decisions: {result.out / 'decisions'}  subset: {result.subset}")
        typer.echo(f"report: {result.out / 'report.json'}")
        if result.instruct is not None:
            i = result.instruct
            typer.echo(
                f"instruction data: {i['path']} ({i['kept']} kept, {i['cot']} chain-of-thought "
                f"rewrites added, {i['dropped']} dropped: see dropped.jsonl)"
            )

    @app.command("ops")
    def ops_command() -> None:
        """List every operator with its parameters."""
        from vlcurate.ops.registry import operators

        table = Table(show_lines=True)
        for col in ("operator", "kind", "what it does", "parameters"):
            table.add_column(col)
        for name, cls in operators().items():
            params = []
            for pname, f in cls.Params.model_fields.items():
                if f.is_required():
                    default = "required"
                else:
                    value = f.get_default(call_default_factory=True)
                    default = f"= {value.model_dump() if isinstance(value, BaseModel) else value!r}"
                params.append(f"{pname} ({default}): {f.description or ''}".rstrip(": "))
            table.add_row(name, cls.kind, escape(cls.doc()), escape("\n".join(params)))
        Console(width=140).print(table)
