"""The `vlcurate` typer app. Each command group lives in its own module with a `register(app)`."""

from __future__ import annotations

import importlib

import typer

from vlcurate.cli.examples import add_examples

app = typer.Typer(
    name="vlcurate",
    help="Score, filter and reshard image-caption data; build verified vision-language datasets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)

# Each module defines `register(app: typer.Typer) -> None`.
_COMMAND_MODULES = (
    "vlcurate.cli.score_cmd",
    "vlcurate.cli.filter_cmd",
    "vlcurate.cli.reshard_cmd",
    "vlcurate.cli.models_cmd",
    "vlcurate.cli.synth_cmd",
    "vlcurate.cli.demo_cmd",
    "vlcurate.cli.agent_cmd",
    "vlcurate.cli.serve_cmd",
    "vlcurate.cli.platform_cmd",
    "vlcurate.cli.game_cmd",
    "vlcurate.cli.run_cmd",
    "vlcurate.cli.recaption_cmd",
    "vlcurate.cli.vlm_cmd",
    "vlcurate.cli.build_cmd",
    "vlcurate.cli.eval_cmd",
    "vlcurate.cli.version_cmd",  # `vlcurate version` alone still prints the installed version
    "vlcurate.cli.diagnose_cmd",
    "vlcurate.cli.plan_cmd",
    "vlcurate.cli.loop_cmd",
)

for _name in _COMMAND_MODULES:
    importlib.import_module(_name).register(app)


def _print_version(value: bool) -> None:
    if value:
        from vlcurate import __version__

        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(
        False,
        "--version",
        help="Print the installed version and exit.",
        callback=_print_version,
        is_eager=True,
    ),
) -> None:
    """Score, filter and reshard image-caption data; build verified vision-language datasets."""


add_examples(app)

if __name__ == "__main__":  # pragma: no cover
    app()
