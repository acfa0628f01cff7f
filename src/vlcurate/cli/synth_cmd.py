"""`vlcurate synth ...`: write synthetic pools (for filtering experiments) and scenes (to look at)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

synth_app = typer.Typer(
    help="The synthetic scene world: pools with known-bad captions, scenes with full ground truth.",
    no_args_is_help=True,
)

OutArg = Annotated[Path, typer.Argument(help="Output directory (created if missing).")]
SeedOpt = Annotated[int, typer.Option(help="Seed; the same seed gives the same bytes.")]


@synth_app.command("pool")
def pool(
    out: OutArg,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples.")] = 2000,
    corrupt_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of captions corrupted on purpose.")
    ] = 0.3,
    seed: SeedOpt = 0,
    shard_size: Annotated[int, typer.Option(min=1, help="Samples per tar shard.")] = 1000,
    image_format: Annotated[str, typer.Option(help="jpg or png.")] = "jpg",
) -> None:
    """Write WebDataset shards (DataComp layout) and truth.parquet saying which captions are wrong."""
    from vlcurate.synth.pool import write_pool

    if image_format not in ("jpg", "jpeg", "png"):
        raise typer.BadParameter(f"must be jpg or png, got {image_format!r}", param_hint="--image-format")
    table = write_pool(
        out, n, corrupt_fraction=corrupt_fraction, seed=seed, shard_size=shard_size, image_format=image_format
    )
    kinds = Counter(k for k in table.column("corruption").to_pylist() if k is not None)
    shards = sorted(set(table.column("shard").to_pylist()))
    summary = Table(title=f"synthetic pool -> {out}")
    summary.add_column("what")
    summary.add_column("count", justify="right")
    summary.add_row("shards", str(len(shards)))
    summary.add_row("samples", str(table.num_rows))
    summary.add_row("clean", str(table.num_rows - sum(kinds.values())))
    summary.add_row("corrupted", str(sum(kinds.values())))
    for kind, count in sorted(kinds.items()):
        summary.add_row(f"  {kind}", str(count))
    Console().print(summary)


@synth_app.command("scenes")
def scenes(
    out: OutArg,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of scenes.")] = 16,
    seed: SeedOpt = 0,
) -> None:
    """Write PNG images, per-object mask PNGs and scenes.jsonl with the full ground truth."""
    import numpy as np
    from PIL import Image

    from vlcurate.synth.corrupt import KINDS, corrupt
    from vlcurate.synth.scene import iter_scenes

    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    with (out / "scenes.jsonl").open("w", encoding="utf-8") as f:
        for i, scene in enumerate(iter_scenes(n, seed)):
            name = f"{i:06d}"
            scene.image.save(out / "images" / f"{name}.png")
            record = {"index": i, "seed": seed, "image": f"images/{name}.png", **scene.to_json()}
            for j, obj in enumerate(record["objects"]):
                mask_path = f"masks/{name}_{j}.png"
                Image.fromarray(scene.masks[j].astype(np.uint8) * 255).save(out / mask_path)
                obj["mask"] = mask_path
            rng = np.random.default_rng([seed, i, 11])
            record["corruptions"] = {k: corrupt(k, scene.caption, scene.layout, rng).text for k in KINDS}
            f.write(json.dumps(record) + "\n")
    Console().print(f"wrote {n} scenes to {out} (images/, masks/, scenes.jsonl)")


@synth_app.command("instruct")
def instruct(
    out: OutArg,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of samples.")] = 2000,
    seed: SeedOpt = 0,
    fmt: Annotated[str, typer.Option("--format", help="llava, sharegpt, openai or hf.")] = "llava",
    fault_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Fraction of samples with one planted fault.")
    ] = 0.5,
) -> None:
    """Write instruction data about synthetic scenes with planted faults, and truth.jsonl."""
    from vlcurate.io.instruct.formats import FORMATS
    from vlcurate.synth.instruct_data import FAULTS, write_planted

    if fmt not in FORMATS:
        raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}, got {fmt!r}", param_hint="--format")
    counts = write_planted(out, n, seed=seed, fault_rate=fault_rate, fmt=fmt)
    data = out / ("data.parquet" if fmt == "hf" else "data.json")
    summary = Table(title=f"synthetic instruction data ({fmt}) -> {data}")
    summary.add_column("fault")
    summary.add_column("samples", justify="right")
    for name in ("clean", *FAULTS):
        summary.add_row(name, str(counts.get(name, 0)))
    Console().print(summary)
    Console().print(f"truth: {out / 'truth.jsonl'}")


@synth_app.command("bench")
def bench(
    out: OutArg,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of benchmark questions.")] = 300,
    seed: SeedOpt = 0,
    categories: Annotated[
        str, typer.Option(help="Comma-separated: count, exists, colour, shape, background, caption.")
    ] = "count,exists,colour,shape,background,caption",
    train: Annotated[
        int, typer.Option(min=0, help="Also write this many training samples to OUT/train (instruct format).")
    ] = 0,
    focus: Annotated[
        str,
        typer.Option(
            help='Training samples only about this, e.g. "colour=red", "shape=circle", "category=count".'
        ),
    ] = "",
    fmt: Annotated[
        str, typer.Option("--format", help="Training data format: llava, sharegpt, openai or hf.")
    ] = "llava",
) -> None:
    """Write a benchmark with known answers (bench.jsonl + images) for `vlcurate eval`, and training data."""
    from vlcurate.cli.errors import user_errors
    from vlcurate.synth.bench import make_benchmark, make_training_samples

    with user_errors():
        cats = tuple(c.strip() for c in categories.split(",") if c.strip())
        wanted: dict[str, str] = {}
        for part in (p.strip() for p in focus.split(",") if p.strip()):
            key, sep, value = part.partition("=")
            if not sep:
                raise ValueError(f"--focus: expected KEY=VALUE, got {part!r}")
            wanted[key.strip()] = value.strip()
        path = make_benchmark(out, n, seed, cats)
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        summary = Table(title=f"synthetic benchmark -> {path}")
        summary.add_column("category")
        summary.add_column("questions", justify="right")
        for cat, count in sorted(Counter(r["category"] for r in rows).items()):
            summary.add_row(cat, str(count))
        Console().print(summary)
        if train:
            data = make_training_samples(out / "train", train, seed, wanted or None, fmt=fmt)
            Console().print(f"training samples: {train} -> {data}" + (f" (focus {focus})" if wanted else ""))


def register(app: typer.Typer) -> None:
    """Add the `synth` command group to the main app."""
    app.add_typer(synth_app, name="synth")
