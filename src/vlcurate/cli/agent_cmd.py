"""`vlcurate agent`: run a contributor agent against a coordinator, or register a new agent token."""

from __future__ import annotations

import signal
from types import FrameType
from typing import Annotated

import typer
from rich.console import Console

from vlcurate.cli.errors import fail, user_errors

console = Console()


def run(
    server: Annotated[str, typer.Option(help="coordinator URL, e.g. http://host:8000")],
    token: Annotated[
        str, typer.Option(envvar="VLCURATE_TOKEN", help="agent token (`vlcurate agent register`)")
    ],
    model: Annotated[
        str | None, typer.Option(help="model name override (default: the model the task pins)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    max_units: Annotated[int | None, typer.Option(help="stop after this many submitted units")] = None,
    max_idle: Annotated[
        float | None, typer.Option(help="stop after this many seconds without work (default: never)")
    ] = None,
    task: Annotated[int | None, typer.Option(help="only take units of this task id")] = None,
    fetch_concurrency: Annotated[int, typer.Option(help="parallel image downloads")] = 16,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no live view; one log line per unit")] = False,
) -> None:
    """Lease image-caption units, score them with the pinned model, submit, repeat (Ctrl-C stops cleanly)."""
    from vlcurate.agents.client import AuthError, PausedError, PlatformError
    from vlcurate.agents.console import agent_console
    from vlcurate.agents.runner import AgentConfig, AgentRunner, ModelMismatchError
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError

    with user_errors():
        config = AgentConfig.model_validate(
            {
                "server": server,
                "token": token,
                "model": model,
                "device": device,
                "precision": precision,
                "max_units": max_units,
                "max_idle_s": max_idle,
                "task_id": task,
                "fetch_concurrency": fetch_concurrency,
                "quiet": quiet,
            }
        )
        runner = AgentRunner(config)

    def interrupt(signum: int, frame: FrameType | None) -> None:
        # Ctrl-C and a service manager's SIGTERM: the same clean exit, lease handed back, exit 0.
        runner.interrupt()
        raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, interrupt)
    old = signal.signal(signal.SIGTERM, interrupt)
    try:
        with agent_console(runner.stats, quiet=quiet, server=config.server):
            summary = runner.run()
    except PausedError as exc:
        raise fail(f"contributor paused by the server: {exc.reason}", code=3) from None
    except AuthError as exc:
        raise fail(f"the server rejected the token ({exc.detail}); register a new agent") from None
    except (ModelMismatchError, WeightsNotFoundError, UnknownModelError, PlatformError, RuntimeError) as exc:
        raise fail(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, old)
        signal.signal(signal.SIGINT, old_int)
    if summary.reason == "interrupted":
        forget_handled_interrupt()
    console.print(summary.final_line(), highlight=False)


def forget_handled_interrupt() -> None:
    """Let a Ctrl-C that was handled end in exit status 0.

    CPython (3.11 here) notes a KeyboardInterrupt that leaves code run by `exec` of a string, even
    when an outer `except` handles it, and at exit kills the process with SIGINT. `dataclasses` and
    `namedtuple` build their methods that way, so a Ctrl-C during the model load (torch's import)
    made a clean stop, lease handed back, exit with -2. Evaluating a string again clears the note.
    """
    exec("pass")  # a string on purpose: only string evaluation resets the flag


def register_agent(
    server: Annotated[str, typer.Option(help="coordinator URL")],
    contributor: Annotated[str, typer.Option(help="contributor name (created if new)")],
    name: Annotated[str, typer.Option(help="agent name")] = "agent",
    admin_token: Annotated[
        str | None,
        typer.Option(
            envvar="VLCURATE_ADMIN_TOKEN", help="operator token (not needed with open registration)"
        ),
    ] = None,
) -> None:
    """Create an agent token for a contributor; it is shown once, keep it."""
    from vlcurate import __version__
    from vlcurate.agents.client import PlatformClient, PlatformError, RetryPolicy
    from vlcurate.server.schemas import AgentCreate

    with user_errors(PlatformError):
        body = AgentCreate(contributor=contributor, name=name, version=__version__)
        with PlatformClient(server, admin_token, retry=RetryPolicy(max_elapsed=30.0)) as client:
            out = client.create_agent(body)
    console.print(
        f"agent {out.agent_id} for contributor {out.contributor!r} (id {out.contributor_id}); token:",
        highlight=False,
    )
    typer.echo(out.token)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Run a contributor agent, or register one.", no_args_is_help=True)
    group.command("run")(run)
    group.command("register")(register_agent)
    from vlcurate.cli.game_cmd import play  # GAP: an agent that plays the game (`vlcurate game play`)

    group.command("play")(play)
    from vlcurate.cli.label_agent_cmd import label  # label tasks (`vlcurate build --platform`)

    group.command("label")(label)
    app.add_typer(group, name="agent")
