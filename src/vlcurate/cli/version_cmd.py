"""`vlcurate version`: immutable dataset versions with per-sample lineage, diffs, exports, validation.

`vlcurate version` alone prints the installed vlcurate version, as it always did; the subcommands
work on a version store (`--store`, default `$VLCURATE_STORE` or `./vstore`). A rejected increment
is a decision, not an error: `validate` exits 0 unless `--fail-on-reject` (then 4).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import fail, user_errors

console = Console()
EXIT_REJECTED = 4

StoreOpt = Annotated[
    Path,
    typer.Option("--store", envvar="VLCURATE_STORE", help="The version store folder (created by `create`)."),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _short(vid: str | None) -> str:
    return vid[:12] if vid else "-"


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False, default=str))


def _ingest(inputs: list[Path], kind: str, store_root: Path, image_root: Path | None = None) -> Any:
    """Samples and events from the inputs: instruction files, a run folder, or a build export."""
    from vlcurate.versions.ingest import Ingested, read_instruct, read_run

    if kind == "auto":
        if len(inputs) == 1 and inputs[0].is_dir():
            kind = "run" if (inputs[0] / "decisions").is_dir() else "build"
        else:
            kind = "instruct"
    if kind == "instruct":
        if image_root is not None and not image_root.is_dir():
            raise ValueError(f"--image-root {image_root}: no such folder")
        return read_instruct(inputs, store_root, image_root), kind
    if image_root is not None:
        raise ValueError("--image-root is for instruction files (a run or build folder records its images)")
    if len(inputs) != 1 or not inputs[0].is_dir():
        raise ValueError(f"--kind {kind} takes one folder, got {len(inputs)} input(s)")
    if kind == "run":
        return read_run(inputs[0], _provides()), kind
    if kind == "build":
        return _read_build(inputs[0], store_root, Ingested), kind
    raise ValueError(f"unknown --kind {kind!r}; expected auto, instruct, run or build")


def _provides() -> dict[str, list[str]]:
    """Which columns each registered operator writes (so each step's lineage event has its own scores)."""
    from vlcurate.ops.registry import operators

    out: dict[str, list[str]] = {}
    for name, cls in operators().items():
        try:
            out[name] = list(cls().provides())
        except Exception:  # an operator that needs parameters to say: its scores go on the last step
            continue
    return out


def _read_build(folder: Path, store_root: Path, ingested: Any) -> Any:
    """A `vlcurate build` export (ImageFolder, COCO, YOLO, VOC, HF) as samples with labels and boxes."""
    from vlcurate.builder.formats import read_dataset
    from vlcurate.versions.ingest import store_image
    from vlcurate.versions.model import LineageEvent

    ds = read_dataset(folder, masks=False)
    out = ingested(sources=[str(folder.resolve())])
    for item in ds.items:
        sid = f"{item.split}/{item.name}"
        image = str(item.path.resolve()) if item.path is not None else store_image(store_root, item.read())
        out.samples.append(
            {
                "id": sid,
                "images": [image],
                "split": item.split,
                "width": item.width,
                "height": item.height,
                "labels": sorted({a.cls for a in item.anns}),
                "boxes": [{"class": a.cls, "box": list(a.box)} for a in item.anns if a.box is not None],
            }
        )
        out.events.append(LineageEvent(sample_id=sid, op="build", params={"source": str(folder.resolve())}))
    return out


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        help="Dataset versions: create, list, show, log, diff, lineage, export, validate "
        "(alone: print the vlcurate version).",
        invoke_without_command=True,
        no_args_is_help=False,
    )

    @group.callback()
    def version_group(ctx: typer.Context) -> None:
        """Immutable, content-addressed dataset versions with per-sample lineage. Alone: print the
        installed vlcurate version."""
        if ctx.invoked_subcommand is None:
            from vlcurate import __version__

            typer.echo(__version__)

    @group.command("create")
    def create_command(
        inputs: Annotated[
            list[Path],
            typer.Argument(
                help="Instruction files (.json/.jsonl/.parquet), a `vlcurate run` folder or a build export."
            ),
        ],
        store: StoreOpt = Path("vstore"),
        message: Annotated[str, typer.Option("--message", "-m", help="What this version is.")] = "",
        parent: Annotated[
            str | None, typer.Option(help="Parent version (id, prefix or ref); default: the branch's head.")
        ] = None,
        root: Annotated[bool, typer.Option("--root", help="Start a new history: no parent.")] = False,
        branch: Annotated[str, typer.Option(help="The ref this version moves (compare-and-swap).")] = "main",
        plan_id: Annotated[
            str | None, typer.Option(help="The plan that asked for this data (lineage).")
        ] = None,
        kind: Annotated[str, typer.Option(help="auto, instruct, run or build.")] = "auto",
        image_root: Annotated[
            Path | None,
            typer.Option(
                help="Folder relative image paths are under (LLaVA's --image-folder); default: the file's."
            ),
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Record the inputs as a new immutable version (an identical one is returned as it is)."""
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        from vlcurate.versions.store import VersionStore

        with user_errors():
            vs = VersionStore(store)
            head = vs.head(branch) if (store / "store.json").is_file() else None
            if root:
                parent_id, move = None, head is None
            elif parent is not None:
                parent_id = vs.resolve(parent)
                move = parent_id == head
            else:
                parent_id, move = head, True  # the ref must still be at `head` when publishing
            with console.status("reading the input", spinner="dots"):
                ing, kind_used = _ingest(inputs, kind, store, image_root)
            with Progress(
                TextColumn("[bold]storing[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("samples hashed"),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            ) as bar:
                task = bar.add_task("store", total=len(ing.samples))
                info = vs.commit(
                    ing.samples,
                    parent=parent_id,
                    message=message or f"{kind_used}: {', '.join(str(p) for p in inputs)}",
                    plan_id=plan_id,
                    events=ing.events,
                    ref=branch if move else None,
                    progress=lambda n: bar.advance(task, n),
                )
        if json_out:
            _print_json({**info.model_dump(), "dropped": ing.dropped, "branch": branch})
            return
        now = vs.head(branch)
        moved = f"{branch} -> {_short(now)}" if now == info.id else f"{branch} not moved (at {_short(now)})"
        console.print(
            f"version [bold]{_short(info.id)}[/] ({info.id}): {info.n_samples:,} samples "
            f"({info.new_samples:,} new content), {info.n_events:,} lineage events, "
            f"{ing.dropped:,} not stored (reasons in lineage); parent {_short(info.parent)}; {moved}",
            highlight=False,
            soft_wrap=True,
        )

    @group.command("list")
    def list_command(store: StoreOpt = Path("vstore"), json_out: JsonOpt = False) -> None:
        """Every version in the store, oldest first, with its refs and attachments."""
        from vlcurate.versions.store import open_store

        with user_errors():
            vs = open_store(store)
            infos = vs.list()
            refs = vs.refs()
            atts = {i.id: sorted(vs.attachments(i.id)) for i in infos}
        if json_out:
            _print_json([{**i.model_dump(), "attachments": atts[i.id]} for i in infos])
            return
        by_id: dict[str, list[str]] = {}
        for name, vid in refs.items():
            by_id.setdefault(vid, []).append(name)
        for i in infos:
            names = ",".join(by_id.get(i.id, []))
            extra = (f" [{names}]" if names else "") + (
                f" attachments: {','.join(atts[i.id])}" if atts[i.id] else ""
            )
            typer.echo(
                f"{_short(i.id)}  {i.created.replace('+00:00', 'Z')}  {i.n_samples:>10,} samples  "
                f"parent {_short(i.parent):12}  {i.message}{extra}"
            )

    @group.command("show")
    def show_command(
        version: Annotated[str, typer.Argument(help="Version id, unique prefix or ref.")],
        store: StoreOpt = Path("vstore"),
        json_out: JsonOpt = False,
    ) -> None:
        """One version: its record, attachments, and a check of every hash (exit 2 when damaged)."""
        from vlcurate.versions.store import open_store

        with user_errors():
            vs = open_store(store)
            vid = vs.resolve(version)
            report = vs.verify(vid)
            info = vs.get(vid) if report.ok else None
            atts = vs.attachments(vid) if info else {}
        if json_out:
            _print_json(
                {
                    "info": info.model_dump() if info else None,
                    "verify": report.model_dump(),
                    "attachments": {k: a.model_dump() for k, a in atts.items()},
                }
            )
        elif info is not None:
            console.print(f"version [bold]{info.id}[/]", highlight=False, soft_wrap=True)
            for k in ("parent", "message", "plan_id", "created", "n_samples", "new_samples", "n_events"):
                console.print(f"  {k:12} {getattr(info, k)}", highlight=False, soft_wrap=True)
            console.print(f"  {'packs':12} {len(info.packs)}", highlight=False, soft_wrap=True)
            for name, att in atts.items():
                summary = att.payload.get("accepted")
                extra = f" (accepted={summary})" if summary is not None else ""
                console.print(f"  attachment   {name}{extra} {att.created}", highlight=False, soft_wrap=True)
            console.print(
                f"  verified     {report.checked_files} files, all hashes match",
                highlight=False,
                soft_wrap=True,
            )
        if not report.ok:
            raise fail(f"version {vid[:12]} is damaged: " + "; ".join(report.problems))

    @group.command("log")
    def log_command(
        version: Annotated[str, typer.Argument(help="Version id, prefix or ref.")] = "main",
        store: StoreOpt = Path("vstore"),
        json_out: JsonOpt = False,
    ) -> None:
        """A version and its ancestors, newest first."""
        from vlcurate.versions.store import open_store

        with user_errors():
            chain = open_store(store).log(version)
        if json_out:
            _print_json([i.model_dump() for i in chain])
            return
        for i in chain:
            plan = f" plan={i.plan_id}" if i.plan_id else ""
            console.print(
                f"[bold]{_short(i.id)}[/] {i.created} {i.n_samples:,} samples{plan}  {i.message}",
                highlight=False,
                soft_wrap=True,
            )

    @group.command("diff")
    def diff_command(
        a: Annotated[str, typer.Argument(help="The older version.")],
        b: Annotated[str, typer.Argument(help="The newer version.")],
        store: StoreOpt = Path("vstore"),
        out: Annotated[
            Path | None,
            typer.Option(help="Write every changed sample (id, change, op, reason) to this Parquet file."),
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Samples added, removed and changed from A to B, counted by the reason their lineage gives."""
        from vlcurate.base.atomic import write_parquet_atomic
        from vlcurate.versions.store import open_store

        with user_errors():
            vs = open_store(store)
            d = vs.diff(a, b)
            if out is not None:
                write_parquet_atomic(out, vs.diff_table(a, b))
        if json_out:
            _print_json(d.model_dump())
            return
        console.print(
            f"{_short(d.a)} -> {_short(d.b)}: +{d.added:,} added, -{d.removed:,} removed, "
            f"~{d.changed:,} changed, {d.unchanged:,} unchanged",
            highlight=False,
            soft_wrap=True,
        )
        table = Table("change", "op", "reason", "samples")
        for r in d.by_reason:
            table.add_row(r.change, r.op or "-", r.reason or "-", f"{r.n:,}")
        if d.by_reason:
            console.print(table)

    @group.command("lineage")
    def lineage_command(
        sample_id: Annotated[str, typer.Argument(help="The sample's id.")],
        store: StoreOpt = Path("vstore"),
        version: Annotated[
            str | None, typer.Option(help="Along this version's ancestry (default: main).")
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """A sample's full history: each version it was in, every operator that touched it and why."""
        from vlcurate.versions.store import open_store

        with user_errors():
            h = open_store(store).lineage(sample_id, version)
        if json_out:
            _print_json(h.model_dump())
            return
        if not h.history:
            raise fail(f"sample {sample_id!r} never appears in the history of version {h.version[:12]}")
        for e in h.history:
            plan = f" plan={e.plan_id}" if e.plan_id else ""
            console.print(
                f"[bold]{_short(e.version)}[/] {e.presence}{plan}  {e.message}",
                highlight=False,
                soft_wrap=True,
            )
            for ev in e.events:
                why = f": {ev.reason}" if ev.reason else ""
                drop = " [red]dropped[/]" if ev.dropped else ""
                scores = " " + json.dumps(ev.scores, default=str) if ev.scores else ""
                console.print(f"    {ev.op}{drop}{why}{scores}", highlight=False, soft_wrap=True)
        if h.sample is not None:
            text = json.dumps(h.sample, ensure_ascii=False)
            shown = text if len(text) <= 400 else text[:400] + " … (--json prints it whole)"
            console.print(shown, highlight=False, markup=False, soft_wrap=True)

    @group.command("export")
    def export_command(
        version: Annotated[str, typer.Argument(help="Version id, prefix or ref.")],
        out: Annotated[Path, typer.Option(help="A new folder for the export.")],
        store: StoreOpt = Path("vstore"),
        fmt: Annotated[str, typer.Option("--format", help="llava, sharegpt, openai, hf or jsonl.")] = "llava",
        missing: Annotated[
            str,
            typer.Option(help="An image that is gone: error (stop), skip (leave out, listed) or keep-ref."),
        ] = "error",
        image_root: Annotated[
            Path | None, typer.Option(help="Folder that relative image paths in the samples are under.")
        ] = None,
    ) -> None:
        """Write a version in a trainer format (images copied in, or embedded for hf)."""
        from vlcurate.versions.store import open_store

        with user_errors():
            vs = open_store(store)
            with console.status("exporting", spinner="dots"):
                res = vs.export(version, fmt, out, missing=missing, image_root=image_root)
        skipped = f", {res['skipped_missing']} skipped (missing.jsonl)" if res["skipped_missing"] else ""
        n = f"{res['samples']:,}"
        console.print(
            f"exported {_short(res['version'])}: {n} samples as {fmt} -> {res['path']}{skipped}",
            highlight=False,
            soft_wrap=True,
        )

    @group.command("validate")
    def validate_command(
        version: Annotated[str, typer.Argument(help="The version holding the increment.")],
        base_run: Annotated[Path, typer.Option(help="Eval run of the model trained on the base.")],
        new_run: Annotated[Path, typer.Option(help="Eval run of the model trained on base + increment.")],
        store: StoreOpt = Path("vstore"),
        method: Annotated[str, typer.Option(help="mcnemar or bootstrap.")] = "mcnemar",
        target: Annotated[str | None, typer.Option(help="A category that must improve.")] = None,
        alpha: Annotated[float, typer.Option(help="Significance level (intervals at 1 - alpha).")] = 0.05,
        name: Annotated[
            str | None, typer.Option(help="Attachment name (default: validation-METHOD).")
        ] = None,
        allow_partial: Annotated[
            bool, typer.Option(help="Pair only the items both runs answered instead of refusing.")
        ] = False,
        fail_on_reject: Annotated[bool, typer.Option(help="Exit 4 when the increment is rejected.")] = False,
        plot: Annotated[
            Path | None, typer.Option(help="Also draw the per-category changes with their intervals (PNG).")
        ] = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Paired test per category between two eval runs; the decision is stored with the version."""
        from vlcurate.evals.paired import compare_runs, plot_decision
        from vlcurate.evals.results import RunFormatError, load_run
        from vlcurate.versions.store import open_store

        if method not in ("mcnemar", "bootstrap"):
            raise fail(f"unknown --method {method!r}; expected mcnemar or bootstrap")
        with user_errors(RunFormatError):
            vs = open_store(store)
            vid = vs.resolve(version)
            decision = compare_runs(
                load_run(base_run),
                load_run(new_run),
                method=method,  # type: ignore[arg-type]
                alpha=alpha,
                target=target,
                allow_partial=allow_partial,
            )
            att = vs.attach(vid, name or f"validation-{method}", decision.model_dump())
            if plot is not None:
                plot_decision(plot, decision)
        if json_out:
            _print_json(decision.model_dump())
        else:
            table = Table("category", "pairs", "base", "new", "delta", "CI", "p", "verdict")
            for c in [*decision.categories.values(), decision.overall]:
                if c.n == 0:
                    table.add_row(c.category, "0", "-", "-", "-", "-", "-", "no pairs")
                    continue
                verdict = "REGRESSED" if c.regressed else "improved" if c.improved else "same"
                assert c.ci is not None and c.delta is not None and c.p_value is not None
                table.add_row(
                    c.category,
                    str(c.n),
                    f"{c.base_accuracy:.3f}",
                    f"{c.new_accuracy:.3f}",
                    f"{c.delta:+.3f}",
                    f"{c.ci[0]:+.3f}..{c.ci[1]:+.3f}",
                    f"{c.p_value:.3g}",
                    verdict,
                )
            console.print(table)
            word = "[green]ACCEPTED[/]" if decision.accepted else "[red]REJECTED[/]"
            console.print(
                f"{word} ({decision.method}, alpha={decision.alpha}): " + "; ".join(decision.reasons)
            )
            console.print(
                f"stored as attachment {att.name!r} of version {vid[:12]}", highlight=False, soft_wrap=True
            )
        if fail_on_reject and not decision.accepted:
            raise typer.Exit(EXIT_REJECTED)

    app.add_typer(group, name="version")
