"""`vlcurate build`: a labelled image dataset from a plain-language request (DatasetAgent).

Exit status: 0 built; 2 a bad request, spec, pool, existing dataset or output folder (one line);
1 an unexpected error. A failed run keeps its finished stages beside --out and resumes on re-run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import user_errors

console = Console()


def build(
    request: Annotated[
        str,
        typer.Argument(help="what to build, e.g. '300 images each of cats, dogs and foxes for detection'"),
    ] = "",
    pool: Annotated[
        list[str] | None,
        typer.Option("--pool", help="images to build from: folder, shards, Parquet or manifest (repeat)"),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="output folder (must not exist unless --overwrite)")
    ] = None,
    task: Annotated[
        str | None, typer.Option(help="classify | detect | segment (default: from the request)")
    ] = None,
    per_class: Annotated[
        int | None, typer.Option("--per-class", min=1, help="images per class (overrides the request)")
    ] = None,
    expand: Annotated[
        Path | None,
        typer.Option(
            help="existing dataset (ImageFolder, COCO, YOLO, VOC) to add to; "
            "none of its images nor their copies enter"
        ),
    ] = None,
    calibrate: Annotated[
        Path | None,
        typer.Option(
            help="labelled dataset whose labels you trust: the verifier's error is measured on it "
            "and ALR corrected for it (default: the --expand dataset)"
        ),
    ] = None,
    spec: Annotated[
        Path | None, typer.Option("--spec", help="start from this spec YAML instead of the request")
    ] = None,
    fmt: Annotated[
        list[str] | None,
        typer.Option("--format", help="imagefolder | coco | yolo | voc (repeat; default by task)"),
    ] = None,
    scorer: Annotated[
        str, typer.Option(help="CLIP scorer for retrieval and zero-shot labels")
    ] = "tiny-synth",
    detector: Annotated[
        str | None,
        typer.Option(help="owlv2 | grounding-dino | a hub name (default: offline region proposals)"),
    ] = None,
    verifier: Annotated[str, typer.Option(help="crop | vlm: the independent second check")] = "crop",
    vlm_url: Annotated[
        str | None, typer.Option(help="OpenAI-compatible VLM for demand analysis / --verifier vlm")
    ] = None,
    vlm_model: Annotated[str, typer.Option(help="model name the VLM server knows")] = "tiny-synth",
    rounds: Annotated[
        int, typer.Option(min=1, max=10, help="collection rounds at most for short classes")
    ] = 3,
    denoise: Annotated[
        bool, typer.Option(help="median-filter images (SSIM to the original recorded)")
    ] = False,
    contrast: Annotated[bool, typer.Option(help="autocontrast images (SSIM recorded)")] = False,
    max_side: Annotated[
        int | None, typer.Option(help="downscale images to this longer side (SSIM recorded)")
    ] = None,
    allow_download: Annotated[bool, typer.Option(help="let model weights download")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing --out")] = False,
    platform: Annotated[
        str | None,
        typer.Option(
            help="platform URL (`vlcurate serve`): contributors' agents label and verify the images "
            "as label tasks (whole images for classify, one crop per box for detect/segment); ALR then "
            "comes from their verified agreement"
        ),
    ] = None,
    platform_token: Annotated[
        str | None, typer.Option(envvar="VLCURATE_ADMIN_TOKEN", help="the platform's operator token")
    ] = None,
    platform_timeout: Annotated[
        float, typer.Option(min=1, help="seconds to wait for the crowd's verified labels")
    ] = 600.0,
    adopt_crowd_labels: Annotated[
        bool,
        typer.Option(
            help="with --platform: take the crowd's verified class where it differs from the model's "
            "(kept as corrected_from) instead of queueing the label for review"
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the spec and the plan with its cost; build nothing")
    ] = False,
) -> None:
    """Build a labelled dataset: spec -> collect -> image tools -> label -> supervise -> export."""
    from vlcurate.builder.collect import CollectError
    from vlcurate.builder.crowd import CrowdConfig, CrowdError
    from vlcurate.builder.export import ExportError
    from vlcurate.builder.formats import FormatError
    from vlcurate.builder.hf_models import ModelUnavailableError
    from vlcurate.builder.job import BuildConfig, plan
    from vlcurate.builder.job import build as run_build
    from vlcurate.builder.spec import SpecError
    from vlcurate.io.staged_dir import OutputDirError
    from vlcurate.models.scorer import WeightsNotFoundError
    from vlcurate.ops.builder_ops import EnhanceParams

    with user_errors(
        SpecError,
        CollectError,
        FormatError,
        ModelUnavailableError,
        OutputDirError,
        ExportError,
        WeightsNotFoundError,
        CrowdError,
    ):
        if out is None:
            raise ValueError("--out is required")
        if platform is not None and not platform_token:
            raise ValueError("--platform needs the operator token: --platform-token or VLCURATE_ADMIN_TOKEN")
        if adopt_crowd_labels and platform is None:
            raise ValueError("--adopt-crowd-labels is for --platform builds (the crowd's labels)")
        enhance = (
            EnhanceParams(denoise=denoise, contrast=contrast, max_side=max_side)
            if (denoise or contrast or max_side)
            else None
        )
        cfg = BuildConfig(
            request=request,
            pools=pool or [],
            out=out,
            task=task,
            images_per_class=per_class,
            expand=expand,
            calibrate=calibrate,
            spec_file=spec,
            formats=fmt or None,
            scorer=scorer,
            detector=detector,
            verifier=verifier,
            vlm_url=vlm_url,
            vlm_model=vlm_model,
            max_rounds=rounds,
            enhance=enhance,
            allow_download=allow_download,
            overwrite=overwrite,
            dry_run=dry_run,
            platform=None
            if platform is None
            else CrowdConfig(
                url=platform, token=platform_token or "", timeout_s=platform_timeout, adopt=adopt_crowd_labels
            ),
        )
        if dry_run:
            p = plan(cfg)
            console.print(json.dumps(p, indent=2), highlight=False, soft_wrap=True)
            return
        summary = run_build(
            cfg, progress=lambda stage, msg: console.print(f"[bold]{stage:>9}[/] {msg}", highlight=False)
        )
    m = summary["metrics"]
    t = Table(title="vlcurate build", show_header=False)
    t.add_row("images", f"{summary['counts']['images']:,}  {json.dumps(summary['counts']['per_split'])}")
    t.add_row("per class", json.dumps(summary["counts"]["per_class"]))
    how = (
        "from the crowd's verified agreement"
        if m["alr"].get("source") == "platform"
        else "corrected for the verifier's measured error"
        if m["alr"].get("calibrated")
        else "uncalibrated"
    )
    alr = "-" if m["alr"]["alr"] is None else f"{m['alr']['alr']:.4f}"
    t.add_row("ALR", f"{alr}  95% CI {m['alr']['ci95']}  ({how})")
    t.add_row("model calls", ", ".join(f"{k} {v:,}" for k, v in sorted(summary["model_calls"].items())))
    t.add_row("CBI", f"{abs(m['balance']['cbi']):.4f}  min/max {m['balance']['min_max_ratio']}")
    t.add_row("queued", f"{summary['queued_for_review']} labels in review/queue.jsonl")
    t.add_row("formats", ", ".join(summary["formats"]) + f"; report in {out}/report/report.html")
    t.add_row("seconds", f"{summary['total_seconds']}")
    console.print(t)
    plat = m.get("platform")
    if plat and plat.get("adopted"):
        console.print(
            f"the crowd corrected {plat['adopted']} labels (their model class is kept as corrected_from "
            "in labels.jsonl)",
            highlight=False,
        )
    if plat and plat["timed_out"]:
        console.print(
            f"[yellow]the crowd verified {plat['units_verified']} of {plat['units']} units before "
            f"--platform-timeout:[/] the rest keep the local check (metrics.platform in build.json)",
            highlight=False,
        )
    if summary["short_classes"]:
        console.print(
            f"[yellow]short of the target:[/] {json.dumps(summary['short_classes'])}", highlight=False
        )


def register(app: typer.Typer) -> None:
    app.command("build")(build)
