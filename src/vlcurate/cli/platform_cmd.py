"""`vlcurate platform ...`: the operator's commands. Registration goes through the server's API
(so it is validated and logged like any call); export and audit read the database directly."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from vlcurate.cli.errors import fail, user_errors

platform_app = typer.Typer(
    help="Operate a DataAgent platform server: datasets, tasks, agents, export.", no_args_is_help=True
)

Server = Annotated[str, typer.Option(envvar="VLCURATE_SERVER", help="Server URL.")]
AdminToken = Annotated[str, typer.Option(envvar="VLCURATE_ADMIN_TOKEN", help="Operator token.")]


def _call(server: str, token: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    import httpx

    try:
        r = httpx.request(
            method,
            server.rstrip("/") + path,
            json=body,
            headers={"Authorization": f"Bearer {token}"},
            timeout=600,
        )
    except httpx.HTTPError as exc:
        raise fail(f"cannot reach {server}: {exc}") from None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail")
        except ValueError:
            detail = r.text[:300]
        raise fail(f"{method} {path}: HTTP {r.status_code}: {detail}")
    return r.json() if r.content else None


def _print(data: Any, line: str, as_json: bool) -> None:
    typer.echo(json.dumps(data, indent=2, default=str) if as_json else line)


JsonOut = Annotated[bool, typer.Option("--json", help="Print the server's full JSON answer.")]


@platform_app.command("add-dataset")
def add_dataset(
    name: Annotated[str, typer.Argument(help="Dataset name.")],
    source: Annotated[
        str, typer.Argument(help="Shards as `vlcurate score` reads them (path, brace pattern, URL).")
    ],
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
    as_json: JsonOut = False,
) -> None:
    """Register a dataset: the server reads every pair once and keeps it."""
    d = _call(server, admin_token, "POST", "/api/v1/datasets", {"name": name, "source": source})
    _print(
        d,
        f"dataset {d['name']!r} (id {d['id']}): {d['n_items']} pairs, {d['n_unreadable']} unreadable",
        as_json,
    )


@platform_app.command("add-task")
def add_task(
    name: Annotated[str, typer.Argument(help="Task name.")],
    dataset: Annotated[str, typer.Option(help="Dataset name.")],
    model: Annotated[str, typer.Option(help="Pinned scorer (`vlcurate models`).")] = "tiny-synth",
    quorum: Annotated[int, typer.Option(help="Agreeing replicas needed per unit.")] = 2,
    unit_size: Annotated[int, typer.Option(help="Pairs per work unit.")] = 256,
    gold_per_unit: Annotated[
        int, typer.Option(help="Hidden checks per unit: its own pairs, answered by a trusted source.")
    ] = 8,
    gold_self_score: Annotated[
        int, typer.Option(help="At most this many checks the server scores itself (the rest: --gold-scores).")
    ] = 1_000_000,
    gold_scores: Annotated[
        str | None, typer.Option(help="A trusted `vlcurate score` output to use as checks.")
    ] = None,
    tolerance: Annotated[float | None, typer.Option(help="Agreement tolerance (default 0.02).")] = None,
    lease_seconds: Annotated[int, typer.Option(help="Lease length before a unit is requeued.")] = 300,
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
    as_json: JsonOut = False,
) -> None:
    """Create a `dva-score` task: pin the model, cut units, prepare hidden checks."""
    body: dict[str, Any] = dict(
        name=name,
        dataset=dataset,
        model=model,
        quorum=quorum,
        unit_size=unit_size,
        gold_per_unit=gold_per_unit,
        lease_seconds=lease_seconds,
        gold={"self_score": gold_self_score, "scores": gold_scores},
    )
    if tolerance is not None:
        body["tolerance"] = tolerance
    t = _call(server, admin_token, "POST", "/api/v1/tasks", body)
    line = (
        f"task {t['name']!r} (id {t['id']}): {t['n_units']} units of up to {t['unit_size']} pairs, "
        f"model {t['model']} ({t['model_fingerprint'][:12]}), quorum {t['quorum']}, "
        f"tolerance {t['tolerance']}, {t['gold_per_unit']} hidden checks per unit"
    )
    _print(t, line, as_json)


@platform_app.command("add-agent")
def add_agent(
    contributor: Annotated[str, typer.Argument(help="Contributor name (created on first use).")],
    name: Annotated[str, typer.Option(help="Agent name.")] = "agent",
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
    as_json: JsonOut = False,
) -> None:
    """Create an agent token for a contributor (printed once)."""
    a = _call(server, admin_token, "POST", "/api/v1/agents", {"contributor": contributor, "name": name})
    _print(
        a,
        f"agent {a['agent_id']} of contributor {a['contributor']!r}; token (shown once): {a['token']}",
        as_json,
    )


@platform_app.command("revoke")
def revoke(
    agent_id: Annotated[int, typer.Argument(help="Agent id.")],
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
) -> None:
    """Revoke an agent's token: its next call is refused."""
    _call(server, admin_token, "POST", f"/api/v1/agents/{agent_id}/revoke")
    typer.echo(f"agent {agent_id} revoked")


@platform_app.command("unpause")
def unpause(
    contributor_id: Annotated[int, typer.Argument(help="Contributor id.")],
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
) -> None:
    """Lift a pause (after review) and reset the strikes that caused it."""
    _call(server, admin_token, "POST", f"/api/v1/contributors/{contributor_id}/unpause")
    typer.echo(f"contributor {contributor_id} unpaused")


@platform_app.command("export")
def export(
    task: Annotated[str, typer.Argument(help="Task name.")],
    out: Annotated[str, typer.Option(help="Output folder (the layout of `vlcurate score --out`).")],
    db: Annotated[
        str, typer.Option(help="The server's database (SQLite path or PostgreSQL URL).")
    ] = "vlcurate.db",
    partial: Annotated[bool, typer.Option(help="Also write shards not yet fully verified.")] = False,
) -> None:
    """Write verified scores so `vlcurate filter` and `vlcurate reshard` read them unchanged."""
    from vlcurate.server.db import make_engine
    from vlcurate.server.errors import PlatformError
    from vlcurate.server.export import export_task

    with user_errors():
        try:
            summary = export_task(make_engine(db), task, out, partial=partial)
        except PlatformError as exc:
            raise fail(exc.detail) from None
    typer.echo(
        f"exported {summary['shards_done']}/{summary['shards_total']} shards, "
        f"{summary['pairs']} pairs -> {out}"
        + (f" ({len(summary['incomplete'])} shards not fully verified yet)" if summary["incomplete"] else "")
    )


@platform_app.command("audit")
def audit(db: Annotated[str, typer.Option(help="The server's database.")] = "vlcurate.db") -> None:
    """Check that the ledger balances, nothing was paid twice and no credit rests on a paused
    contributor; list retired hidden checks; exit 1 on a problem."""
    from vlcurate.server.checks import retired
    from vlcurate.server.db import make_engine
    from vlcurate.server.ledger import audit as run_audit
    from vlcurate.server.links import frequent_partners

    with make_engine(db).connect() as conn:
        problems = run_audit(conn)
        for line in retired(conn):
            typer.echo(f"retired check (look at it): {line}")
        for line in frequent_partners(conn):
            typer.echo(f"frequent partners (look at them): {line}")
    if problems:
        for p in problems:
            typer.echo(f"problem: {p}")
        raise typer.Exit(1)
    typer.echo("ledger balances: every credit traceable to a valid submission, none paid twice")


def register(app: typer.Typer) -> None:
    app.add_typer(platform_app, name="platform")
