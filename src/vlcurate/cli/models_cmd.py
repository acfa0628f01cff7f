"""`vlcurate models`: list the scorers vlcurate knows and whether their weights are here."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import user_errors

console = Console()


def models_list() -> None:
    """List named models, where their weights come from, and whether they load offline here."""
    from vlcurate.models.clip import weights_available
    from vlcurate.models.registry import OPEN_FORMS, fixed_specs

    t = Table(title="vlcurate models")
    for col in ("name", "open_clip", "weights here", "description"):
        t.add_column(col)
    for spec in fixed_specs():
        avail = weights_available(spec)
        mark = "[green]yes[/]" if avail else ("[red]no[/]" if avail is False else "?")
        where = spec.open_clip_name if not spec.bundled else "bundled"
        if spec.pretrained:
            where += f" / {spec.pretrained}"
        t.add_row(spec.name, where, mark, spec.description)
    for form, desc in OPEN_FORMS.items():
        t.add_row(form, "", "", desc)
    console.print(t)
    console.print(
        "Weights are never downloaded unless you pass --allow-download "
        "(or run `vlcurate models download NAME`)."
    )


def models_download(
    name: Annotated[str, typer.Argument(help="model name to fetch into the Hugging Face / open_clip cache")],
) -> None:
    """Download a model's weights (needs network); afterwards it loads offline."""
    from vlcurate.models.loader import load_scorer
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError

    with user_errors(WeightsNotFoundError, UnknownModelError):
        scorer = load_scorer(name, allow_download=True, device="cpu", precision="fp32")
    console.print(f"{name}: loaded, fingerprint {scorer.fingerprint[:16]}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="List and fetch scoring models.", invoke_without_command=True, no_args_is_help=False
    )

    @group.callback(invoke_without_command=True)
    def _default(ctx: typer.Context) -> None:
        if ctx.invoked_subcommand is None:
            models_list()

    group.command("list")(models_list)
    group.command("download")(models_download)
    app.add_typer(group, name="models")
