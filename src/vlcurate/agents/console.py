"""What a contributor sees while the agent works: a live terminal panel, or one log line per unit.

The live view re-renders from the runner's `AgentStats` a few times a second (rich's
`get_renderable`), so the runner never blocks on the terminal. `--quiet` swaps it for the
`logging` module: one INFO line per unit from the runner, warnings for trouble, nothing else,
which is what a service manager or a log file wants.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.logging import RichHandler
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from vlcurate.agents.runner import AgentStats, PairView


def _score_text(score: float | None, status: str) -> Text:
    if score is None:
        return Text(status, style="yellow")
    style = "green" if score >= 0.3 else ("yellow" if score >= 0.15 else "red")
    return Text(f"{score:+.3f}", style=style)


def _caption(p: PairView, width: int = 90) -> str:
    text = (p.caption or "(no caption)").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def render(stats: AgentStats, server: str = "") -> RenderableType:
    """One frame of the live view."""
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", justify="right")
    head.add_column()
    me = stats.me
    who = f"{me.contributor} / agent {me.agent_name} (#{me.agent_id})" if me else "…"
    head.add_row("server", f"{server}  [dim]{who}[/]")
    head.add_row("state", stats.state)
    model = f"{stats.model} [dim]{(stats.fingerprint or '')[:12]}[/]" if stats.model else "not loaded yet"
    head.add_row("model", model)
    lease = f"lease {stats.lease_id} (unit {stats.unit_id})" if stats.lease_id is not None else "none"
    head.add_row("working on", lease)
    head.add_row("throughput", f"{stats.pairs_per_s():,.1f} pairs/s (last minute)")
    head.add_row(
        "done",
        f"{stats.units_done:,} units, {stats.pairs_scored:,} pairs"
        + (f", {stats.units_dropped} dropped" if stats.units_dropped else ""),
    )
    subs = ", ".join(f"{k} {v}" for k, v in sorted(stats.submissions.items())) or "none yet"
    head.add_row("submissions", subs)
    total = f", {me.points:,.1f} total" if me else ""
    head.add_row("points", f"+{stats.points_credited:,.1f} this session{total}")
    if me:
        trusted = "[green]trusted[/]" if me.trusted else "not trusted yet"
        head.add_row(
            "reputation",
            f"{me.reputation:.3f} ({trusted}; {me.valid_results:,} valid results; "
            f"quota left {me.quota_left:,})",
        )
    parts: list[RenderableType] = [head]
    if stats.last_pair is not None:
        lp = stats.last_pair
        parts.append(
            Panel(
                Group(Text(_caption(lp, 200)), _score_text(lp.score, lp.status)),
                title="current pair",
                title_align="left",
            )
        )
    if stats.recent_pairs:
        t = Table(title="recent pairs", title_justify="left", show_header=True, expand=False)
        t.add_column("score", justify="right")
        t.add_column("caption")
        for p in list(stats.recent_pairs)[::-1]:
            t.add_row(_score_text(p.score, p.status), _caption(p))
        parts.append(t)
    errors = list(stats.errors)[-4:]
    if errors:
        et = Table.grid(padding=(0, 1))
        for ts, msg in errors[::-1]:
            when = Text(time.strftime("%H:%M:%S", time.localtime(ts)), style="dim")
            et.add_row(when, Text(msg, style="red"))
        parts.append(Panel(et, title="recent errors", title_align="left", border_style="red"))
    return Panel(Group(*parts), title="vlcurate agent", border_style="blue")


_installed: list[logging.Handler] = []


def setup_logging(quiet: bool, console: Console | None = None) -> None:
    """INFO lines (one per unit) in quiet mode; only warnings, rendered by rich, under the live view."""
    root = logging.getLogger("vlcurate")
    while _installed:
        root.removeHandler(_installed.pop())
    handler: logging.Handler
    if quiet:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.setLevel(logging.INFO)
    else:
        handler = RichHandler(console=console, show_path=False, markup=False)
        root.setLevel(logging.WARNING)
    _installed.append(handler)
    root.addHandler(handler)
    root.propagate = False


@contextlib.contextmanager
def agent_console(stats: AgentStats, *, quiet: bool, server: str = "") -> Iterator[None]:
    """Show the live view while the block runs (nothing but log lines when quiet)."""
    console = Console(stderr=True)
    setup_logging(quiet, console)
    if quiet:
        yield
        return
    live = Live(
        console=console,
        get_renderable=lambda: render(stats, server),
        refresh_per_second=4,
        transient=False,
        redirect_stdout=True,
        redirect_stderr=False,
    )
    with live:
        yield
