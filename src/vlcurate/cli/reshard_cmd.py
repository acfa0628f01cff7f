"""`vlcurate reshard`: write the samples of a DataComp subset into new WebDataset shards.

Exit status (see `vlcurate.cli.errors`): 0 when every input shard was read and every subset sample
found was written; `EXIT_PARTIAL` (3) when an input shard is missing or broken, or a subset
sample could not be written (its image could not be read or fetched); 2 for usage errors.
Subset uids that are not in the input are counted, not failures (a subset may cover more data).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vlcurate.cli.data_options import data_options
from vlcurate.cli.errors import EXIT_PARTIAL
from vlcurate.io.shards import ShardRef

_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_bytes(value: str) -> int:
    """'500000', '500MB', '1GiB' -> bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmg]i?)?b?\s*", value.lower())
    if not m:
        raise typer.BadParameter(f"not a byte size: {value!r} (e.g. 1000000, 500MB, 1GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2) or ""])


def _summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="reshard", show_header=False)
    rows = [
        ("input shards", summary["input_shards"]),
        ("samples seen", summary["seen"]),
        ("samples written", summary["written"]),
        ("shards written", summary["shards_written"]),
        ("subset size", summary["subset_size"]),
        ("subset uids not found in input", summary["subset_not_found"]),
        ("duplicate uids (kept)", summary["duplicates"]),
    ]
    if summary.get("resumed_after_shards"):
        rows.append(("resumed after shards", summary["resumed_after_shards"]))
    for reason, n in sorted(summary.get("not_written", {}).items()):
        rows.append((f"not written: {reason}", n))
    if summary.get("shard_errors"):
        rows.append(("input shards with errors", len(summary["shard_errors"])))
    rows.append(("output", summary["out_dir"]))
    for name, value in rows:
        table.add_row(name, str(value))
    return table


def reshard_problems(summary: dict[str, Any]) -> list[str]:
    """What keeps a reshard from being complete, one line each (empty: everything done)."""
    out: list[str] = []
    errors = summary.get("shard_errors") or []
    if errors:
        out.append(f"{len(errors)} of {summary.get('input_shards')} input shards missing or broken")
    not_written = {k: int(v) for k, v in (summary.get("not_written") or {}).items() if v}
    if not_written:
        by = ", ".join(f"{k} {v:,}" for k, v in sorted(not_written.items()))
        out.append(f"{sum(not_written.values()):,} subset samples not written ({by})")
    return out


def register(app: typer.Typer) -> None:
    """Add the `reshard` command to the main app."""

    @app.command("reshard")
    @data_options
    def reshard_command(
        inputs: Annotated[
            list[str],
            typer.Argument(help="Tar shards (path, folder, glob, {a..b}, URL), parquet, folder or manifest."),
        ],
        subset: Annotated[Path, typer.Option("--subset", help="DataComp subset .npy (dtype 'u8,u8').")],
        out: Annotated[Path, typer.Option("--out", help="Output folder for the new shards.")],
        samples_per_shard: Annotated[int, typer.Option(min=1, help="Samples per output shard.")] = 10_000,
        max_shard_bytes: Annotated[
            str | None, typer.Option(help="Also start a new shard before this size (e.g. 1GiB).")
        ] = None,
        overwrite: Annotated[bool, typer.Option(help="Replace shards of another run in --out.")] = False,
        *,
        source_options: dict[str, Any],
    ) -> None:
        """Write the samples whose uid is in a DataComp subset into new WebDataset shards."""
        from vlcurate.io.reshard import reshard

        err = Console(stderr=True)
        limit = parse_bytes(max_shard_bytes) if max_shard_bytes else None
        try:
            with Progress(
                TextColumn("reshard"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err,
                transient=True,
            ) as bar:
                task = bar.add_task("reshard", total=None, info="")

                def on_shard(shard: ShardRef, counters: dict[str, Any]) -> None:
                    bar.update(task, advance=1, info=f"{counters['written']}/{counters['seen']} written")

                summary = reshard(
                    inputs[0] if len(inputs) == 1 else inputs,
                    subset,
                    out,
                    samples_per_shard=samples_per_shard,
                    max_shard_bytes=limit,
                    overwrite=overwrite,
                    source_options=source_options,
                    progress=on_shard,
                )
        except (ValueError, OSError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        console = Console()
        if summary.get("already_done"):
            console.print("[yellow]already done[/yellow]: this reshard finished earlier; nothing to do")
        console.print(_summary_table(summary))
        for e in summary["shard_errors"]:
            err.print(f"[red]shard error:[/red] {e['error']}", highlight=False, soft_wrap=True)
        problems = reshard_problems(summary)
        for p in problems:
            err.print(f"[yellow]incomplete:[/] {p}", highlight=False, soft_wrap=True)
        if problems:
            err.print(f"exit status {EXIT_PARTIAL}: the new shards lack the samples above", highlight=False)
            raise typer.Exit(EXIT_PARTIAL)
