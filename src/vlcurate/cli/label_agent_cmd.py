"""`vlcurate agent label`: a contributor agent for label tasks (`vlcurate build --platform`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from vlcurate.cli.errors import user_errors

console = Console()


def label(
    server: Annotated[str, typer.Option(help="platform URL, e.g. http://host:8000")],
    token: Annotated[
        str, typer.Option(envvar="VLCURATE_TOKEN", help="agent token (`vlcurate agent register`)")
    ],
    model: Annotated[str, typer.Option(help="CLIP-style model that answers zero-shot")] = "tiny-synth",
    device: Annotated[str, typer.Option(help="auto | cpu | cuda[:N]")] = "auto",
    precision: Annotated[str, typer.Option(help="auto | fp32 | bf16 | fp16")] = "auto",
    max_units: Annotated[int | None, typer.Option(min=1, help="stop after this many units")] = None,
    max_idle: Annotated[
        float, typer.Option(min=0, help="stop after this many seconds without a label unit")
    ] = 30.0,
) -> None:
    """Lease units of images from label tasks, label each zero-shot with your model, submit, repeat."""
    from vlcurate.agents.client import AuthError, PlatformClient, PlatformError
    from vlcurate.agents.labeller import LabelAgent, zero_shot
    from vlcurate.models.loader import load_scorer
    from vlcurate.models.registry import UnknownModelError
    from vlcurate.models.scorer import WeightsNotFoundError

    poll = 1.0
    with user_errors(AuthError, PlatformError, UnknownModelError, WeightsNotFoundError):
        if not token or any(c.isspace() for c in token.strip()):
            raise ValueError("--token must be the token alone (the last line of `vlcurate agent register`)")
        scorer = load_scorer(model, device=device, precision=precision)  # type: ignore[arg-type]
        client = PlatformClient(server, token)
        agent = LabelAgent(
            client,
            zero_shot(scorer),
            model=scorer.fingerprint,
            max_units=max_units,
            idle_polls=int(max_idle / poll),
            poll_seconds=poll,
        )
        try:
            out = agent.run()
            me = client.me()  # units verified after our submission were paid later
        finally:
            client.close()
    console.print(
        f"{out.units} units ({out.items} images) labelled with {model}: {out.states} when submitted; "
        f"{me.contributor} now has {me.points:g} points, reputation {me.reputation:.2f}; "
        f"stopped: {out.stopped}",
        highlight=False,
    )
