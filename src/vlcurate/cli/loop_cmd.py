"""`vlcurate loop BENCH`: evaluate, diagnose, plan, apply, version, train, validate, for N rounds.

Where new data comes from is the collector: `--collect synth` (offline: the synthetic world's
`make_training_samples` answers each collect action's focus), `--collect build --pool SRC` (each
collect action's `vlcurate build` request run against the pool; every exported, verified image
becomes a question/answer sample) or `--collect-cmd CMD`, a command run once per collect action with
{out} (a folder to write instruction data into), {n}, {focus} (JSON), {request} (the `vlcurate
build` request) and {seed}. The plan's improve recipes run over the training samples unless
`--no-improve`.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import EXIT_PARTIAL, user_errors

if TYPE_CHECKING:
    from vlcurate.metabolism.plan import CollectAction


def register(app: typer.Typer) -> None:
    app.command("loop")(loop_cmd)


def synth_collector(action: CollectAction, out: Path, seed: int) -> list[Path]:
    """Offline: synthetic-world samples about the action's focus (and category); a confusion pair
    `a|b` is split into two halves, one about each value."""
    from vlcurate.synth.bench import FOCUS_KEYS, make_training_samples

    variants: list[dict[str, str]] = [{"category": action.category} if action.category else {}]
    for k, v in action.focus.items():
        if k in FOCUS_KEYS and k != "category":
            variants = [{**f, k: x} for f in variants for x in v.split("|")]
    files: list[Path] = []
    for i, f in enumerate(variants):
        n = max(1, action.n // len(variants))
        files.append(make_training_samples(out / f"part-{i}", n, seed + i, f or None))
    return files


def command_collector(cmd: str) -> Callable[[CollectAction, Path, int], list[Path]]:
    """A collector that runs `cmd` once per collect action and reads the instruction data it wrote."""

    def collect(action: CollectAction, out: Path, seed: int) -> list[Path]:
        from vlcurate.metabolism.trainpool import instruct_files

        out.mkdir(parents=True, exist_ok=True)
        values = {
            "out": str(out),
            "n": str(action.n),
            "focus": json.dumps(action.focus),
            "request": action.build_request or "",
            "seed": str(seed),
        }
        filled = cmd.format(**{k: shlex.quote(v) for k, v in values.items()})
        proc = subprocess.run(filled, shell=True, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"collect command exited with {proc.returncode}: {proc.stderr.strip()[-300:]}")
        return [Path(f) for f in instruct_files(out)]

    return collect


def loop_cmd(
    bench: Annotated[Path, typer.Argument(help="the benchmark (`vlcurate eval` formats)")],
    store: Annotated[Path, typer.Option(help="the version store the loop commits to")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the rounds and the summary")],
    train: Annotated[
        str | None,
        typer.Option(help="first training data: an instruction file or folder, or a version of --store"),
    ] = None,
    endpoint: Annotated[str, typer.Option(help="OpenAI-compatible base URL of the model")] = (
        "http://127.0.0.1:8300/v1"
    ),
    model: Annotated[str, typer.Option(help="model name at --endpoint")] = "tiny-synth",
    api_key: Annotated[str | None, typer.Option(help="API key for --endpoint")] = None,
    rounds: Annotated[int, typer.Option(min=1, help="rounds to run")] = 2,
    train_cmd: Annotated[
        str | None,
        typer.Option(
            help="training hook: a command with {version}, {version_dir}, {export}, {round}, {endpoint}, "
            "{store}; default: the bundled server reloads its memory (POST /admin/memory)"
        ),
    ] = None,
    collect: Annotated[
        str,
        typer.Option(help="where new data comes from: synth (offline) or build (`vlcurate build`, --pool)"),
    ] = "synth",
    pool: Annotated[
        list[str] | None,
        typer.Option(
            help="--collect build: image pool(s) to build from (folders, shards, Parquet, manifests)"
        ),
    ] = None,
    improve: Annotated[
        bool,
        typer.Option(
            "--improve/--no-improve", help="run the plan's improve recipes (recaption, CoT rewrite)"
        ),
    ] = True,
    collect_cmd: Annotated[
        str | None,
        typer.Option(help="collect with a command instead: {out}, {n}, {focus}, {request}, {seed}"),
    ] = None,
    per_weakness: Annotated[int, typer.Option(min=1, help="new samples per weakness")] = 200,
    top: Annotated[int, typer.Option(min=1, help="weaknesses planned for per round")] = 3,
    method: Annotated[str, typer.Option(help="paired test: mcnemar | bootstrap")] = "mcnemar",
    limit: Annotated[int | None, typer.Option(min=1, help="only the first N benchmark items")] = None,
    concurrency: Annotated[int, typer.Option(min=1, help="requests in flight")] = 16,
    probe: Annotated[bool, typer.Option("--probe/--no-probe", help="re-ask failures in diagnosis")] = True,
    require_gain: Annotated[
        bool,
        typer.Option(
            "--require-gain/--no-require-gain",
            help="accept only an increment that closes a planned weakness or improves a category",
        ),
    ] = False,
    scorer: Annotated[
        str, typer.Option(help="CLIP-style scorer for diagnosis embeddings, or 'none'")
    ] = "tiny-synth",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Run the data metabolism loop; a re-run resumes each round where it stopped."""
    from vlcurate.metabolism.loop import Collector, Loop, LoopConfig, LoopError

    with user_errors(LoopError):
        if collect not in ("synth", "build") and collect_cmd is None:
            raise ValueError(
                f"--collect {collect!r}: 'synth' and 'build' are built in; use --collect-cmd for others"
            )
        if collect == "build" and not pool and collect_cmd is None:
            raise ValueError("--collect build needs --pool (the images to build from)")
        if pool and collect != "build":
            raise ValueError("--pool is for --collect build")
        collector: Collector = synth_collector
        if collect_cmd:
            collector = command_collector(collect_cmd)
        elif collect == "build":
            from vlcurate.metabolism.apply import build_collector

            collector = build_collector(list(pool or []), progress=not quiet)
        cfg = LoopConfig.model_validate(
            {
                "bench": str(bench),
                "endpoint": endpoint,
                "model": model,
                "api_key": api_key,
                "store": store,
                "out": out,
                "train": train,
                "rounds": rounds,
                "train_cmd": train_cmd,
                "per_weakness": per_weakness,
                "top": top,
                "method": method,
                "limit": limit,
                "concurrency": concurrency,
                "probe": probe,
                "require_gain": require_gain,
                "improve": improve,
                "scorer": None if scorer.lower() == "none" else scorer,
                "progress": not quiet,
            }
        )
        summary = Loop(cfg, collector).run()
    table = Table(
        "round", "status", "top weakness", "added", "improved", "removed", "overall before", "overall after"
    )
    for r in summary.rounds:
        b, a = r.accuracy_before.get("overall", {}), r.accuracy_after.get("overall", {})
        table.add_row(
            str(r.round),
            r.status,
            r.top_weakness or "-",
            str(r.added),
            str(r.improved),
            str(r.removed),
            f"{b['accuracy']:.1%}" if b.get("accuracy") is not None else "-",
            f"{a['accuracy']:.1%}" if a.get("accuracy") is not None else "-",
        )
    Console().print(table)
    for r in summary.rounds:
        for t in r.targets:
            b, a = (
                f"{x:.0%}" if x is not None else "-"
                for x in (t["before"]["accuracy"], t["after"]["accuracy"])
            )
            closed = " (closed)" if t["closed"] else ""
            n = t["after"]["n"]
            line = f"round {r.round}: {t['weakness']} {t['label']}: {b} -> {a} of {n} items{closed}"
            Console().print(line, highlight=False)
    Console().print(
        f"{summary.stopped}; wrote {out / 'summary.json'} and {out / 'summary.html'}", highlight=False
    )
    if any(r.status == "failed" for r in summary.rounds):
        raise typer.Exit(EXIT_PARTIAL)
