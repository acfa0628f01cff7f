"""`vlcurate plan DIAG --out PLAN`: the next iteration's actions from a diagnosis."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from vlcurate.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    app.command("plan")(plan_cmd)


def plan_cmd(
    diagnosis: Annotated[Path, typer.Argument(help="a diagnosis folder (written by `vlcurate diagnose`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for plan.json, recipes and build specs")],
    per_weakness: Annotated[int, typer.Option(min=1, help="new samples asked for per weakness")] = 200,
    top: Annotated[int, typer.Option(min=1, help="plan for this many of the best-ranked weaknesses")] = 5,
    vlm_url: Annotated[
        str, typer.Option(help="OpenAI-compatible base URL the recipes' rewrite steps ask")
    ] = "http://127.0.0.1:8300/v1",
    vlm_model: Annotated[str, typer.Option(help="model name for the recipes' rewrite steps")] = "tiny-synth",
) -> None:
    """Collect (build requests, retrieval queries, game pools), improve (recipes), remove (implicated
    training samples) and the mixture per training stage, each action naming its evidence."""
    from vlcurate.metabolism.diagnosis import DiagnosisError, load_diagnosis
    from vlcurate.metabolism.plan import PlanError, make_plan
    from vlcurate.ops.recipe import RecipeError

    with user_errors(DiagnosisError, PlanError, RecipeError):
        diag = load_diagnosis(diagnosis)
        plan = make_plan(
            diag,
            out,
            diagnosis_path=str(diagnosis),
            per_weakness=per_weakness,
            top=top,
            endpoint=vlm_url,
            model=vlm_model,
        )
    table = Table("action", "what", "evidence")
    for c in plan.collect:
        what = c.build_request or "retrieval: " + "; ".join(c.retrieval_queries[:3])
        table.add_row(c.id, f"collect {c.n}: {what}", f"{c.evidence.weakness} {c.evidence.label}")
    for i in plan.improve:
        table.add_row(i.id, f"{i.op} ({i.recipe})", f"{i.evidence.weakness} {i.evidence.label}")
    for r in plan.remove:
        table.add_row(
            r.id, f"remove {len(r.sample_ids)} samples", f"{r.evidence.weakness} {r.evidence.label}"
        )
    Console().print(table)
    Console().print(f"plan {plan.id}: wrote {out / 'plan.json'}", highlight=False)
