"""`vlcurate game ...`: operate GAP games. `create` and `list` go through the server's API (like
`vlcurate platform add-dataset`); `export` and `audit` read the database directly."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vlcurate.cli.errors import fail, user_errors
from vlcurate.cli.platform_cmd import AdminToken, JsonOut, Server, _call, _print

game_app = typer.Typer(
    help="Operate GAP games: create, list, export hard examples, audit.", no_args_is_help=True
)


@game_app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="Game name (letters, digits, . _ -).")],
    pool: Annotated[str, typer.Option(help="Untainted images: any input `vlcurate score` reads.")],
    easy_pool: Annotated[str, typer.Option(help="Tainted images (few objects, plain scenes).")],
    vlm_url: Annotated[str, typer.Option(help="OpenAI-compatible base URL of the model, ending in /v1.")],
    vlm_model: Annotated[str, typer.Option(help="The model's name on that server.")] = "tiny-synth",
    taint_instruction: Annotated[
        str | None, typer.Option(help="System prompt on tainted images (default: answer wrongly, plausibly).")
    ] = None,
    images: Annotated[int, typer.Option(min=1, help="Images per session.")] = 10,
    tainted: Annotated[int, typer.Option(min=0, help="Tainted images per session.")] = 5,
    seconds: Annotated[int, typer.Option(min=5, help="Seconds per image (server-enforced).")] = 120,
    points: Annotated[
        float, typer.Option(min=0, help="Points per flagged tainted / confirmed image.")
    ] = 20.0,
    judges: Annotated[int, typer.Option(min=1, help="Agreeing independent judges that settle a flag.")] = 3,
    min_skill: Annotated[float, typer.Option(help="Earning bar on detection minus false-alarm rate.")] = 0.4,
    vlm_judge: Annotated[
        list[str] | None,
        typer.Option(
            help="A VLM judge of the panel, MODEL@URL (repeat for more); together they are one voice "
            "on each flag."
        ),
    ] = None,
    server: Server = "http://127.0.0.1:8000",
    admin_token: AdminToken = "",
    as_json: JsonOut = False,
) -> None:
    """Create a game: the server reads both pools once and keeps the images."""
    body = {
        "name": name,
        "pool": pool,
        "easy_pool": easy_pool,
        "vlm_url": vlm_url,
        "model": vlm_model,
        "n_images": images,
        "n_tainted": tainted,
        "seconds_per_image": seconds,
        "points_per_image": points,
        "judges_needed": judges,
        "min_skill": min_skill,
    }
    if taint_instruction:
        body["taint_instruction"] = taint_instruction
    if vlm_judge:
        body["vlm_judges"] = [_judge(i, spec) for i, spec in enumerate(vlm_judge)]
    g = _call(server, admin_token, "POST", "/api/v1/game/games", body)
    panel = ", ".join(f"{j['name']} ({j['model']})" for j in g.get("vlm_judges") or [])
    _print(
        g,
        f"game {g['name']!r} (id {g['id']}): {g['images_main']} untainted and "
        f"{g['images_easy']} easy images, "
        f"model {g['model']} at {g['vlm_url']}; sessions of {g['n_images']} ({g['n_tainted']} tainted), "
        f"{g['seconds_per_image']} s an image" + (f"; VLM judges: {panel}" if panel else ""),
        as_json,
    )


def _judge(i: int, spec: str) -> dict[str, str]:
    """`MODEL@URL` -> a judge of the panel named after its place and model."""
    model, sep, url = spec.rpartition("@")
    if not sep or not model or not url.startswith(("http://", "https://")):
        raise fail(f"--vlm-judge {spec!r}: expected MODEL@URL, e.g. tiny-synth@http://127.0.0.1:8300/v1")
    return {"name": f"judge{i + 1}-{model}"[:100].replace("/", "_"), "model": model, "vlm_url": url}


@game_app.command("list")
def list_games(
    server: Server = "http://127.0.0.1:8000", admin_token: AdminToken = "", as_json: JsonOut = False
) -> None:
    """The server's games."""
    games = _call(server, admin_token, "GET", "/api/v1/game/games")
    lines = [
        f"{g['name']}: {g['state']}, model {g['model']}, {g['images_main']}+{g['images_easy']} images"
        for g in games
    ]
    _print(games, "\n".join(lines) or "no games", as_json)


@game_app.command("export")
def export(
    name: Annotated[str, typer.Argument(help="Game name.")],
    out: Annotated[Path, typer.Option(help="Output folder.")],
    db: Annotated[
        str, typer.Option(help="The server's database (SQLite path or PostgreSQL URL).")
    ] = "vlcurate.db",
    eval_fraction: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of image groups for eval.")
    ] = 0.2,
    near_dup_bits: Annotated[
        int, typer.Option(min=0, max=64, help="Perceptual-hash distance that makes two images one group.")
    ] = 4,
) -> None:
    """Write confirmed hard examples as LLaVA, ShareGPT and OpenAI JSON plus DPO pairs, split
    train/eval by image and near-duplicate, with a dataset card."""
    from vlcurate.server.db import make_engine
    from vlcurate.server.errors import PlatformError
    from vlcurate.server.game.export import export_game, write_export_summary

    with user_errors():
        try:
            summary = export_game(
                make_engine(db), name, out, eval_fraction=eval_fraction, near_dup_bits=near_dup_bits
            )
        except PlatformError as exc:
            raise fail(exc.detail) from None
    typer.echo(write_export_summary(summary) + f" -> {out}")


@game_app.command("audit")
def audit(
    db: Annotated[str, typer.Option(help="The server's database.")] = "vlcurate.db",
    fix: Annotated[
        bool,
        typer.Option(
            help="First ask VLM judges for missing verdicts and re-settle every judged flag (new links, "
            "judges who stopped earning or lost their voice)."
        ),
    ] = False,
) -> None:
    """Check the ledger (game credits included), list disputed flags and flags the VLM judges split
    on, with every judge's verdict; exit 1 on a problem."""
    from sqlalchemy import func, select

    from vlcurate.server import db as tables
    from vlcurate.server.db import make_engine
    from vlcurate.server.game.judging import model_verdicts, reconsider_all
    from vlcurate.server.game.panel import judge_missing
    from vlcurate.server.ledger import audit as run_audit

    engine = make_engine(db)
    if fix:
        judged = judge_missing(engine)
        if judged:
            typer.echo(f"VLM judges: {judged} missing verdicts asked for")
        changed = reconsider_all(engine)
        typer.echo("re-settled: " + (", ".join(f"{k} {v}" for k, v in changed.items()) or "no change"))
    F, V = tables.game_flags, tables.game_model_verdicts
    with engine.connect() as conn:
        problems = run_audit(conn)
        split = {
            fid
            for (fid,) in conn.execute(
                select(V.c.flag_id)
                .where(V.c.model_wrong.is_not(None))
                .group_by(V.c.flag_id)
                .having(func.count(func.distinct(V.c.model_wrong)) > 1)
            ).all()
        }
        shown = conn.execute(
            select(F).where(F.c.disputed.is_(True) | F.c.id.in_(split)).order_by(F.c.id)
        ).all()
        panel = model_verdicts(conn, [r.id for r in shown])
        for r in shown:
            what = "disputed flag" if r.disputed else "flag"
            typer.echo(
                f"{what} {r.public_id}: {r.state}, {r.votes_wrong} say the model was wrong, "
                f"{r.votes_right} say it was right"
            )
            for v in panel[r.id]:
                said = "no verdict" if v["model_wrong"] is None else "wrong" if v["model_wrong"] else "right"
                typer.echo(f"  VLM judge {v['judge']}: {said}" + (f" ({v['error']})" if v["error"] else ""))
        counts: dict[str, int] = dict(conn.execute(select(F.c.state, func.count()).group_by(F.c.state)).all())
    typer.echo("flags: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))
    if problems:
        for p in problems:
            typer.echo(f"problem: {p}")
        raise typer.Exit(1)
    typer.echo("ledger balances: every game credit pays one earning flag, none paid twice")


def play(
    game: Annotated[str, typer.Option(help="The game to play.")],
    server: Server = "http://127.0.0.1:8000",
    token: Annotated[
        str, typer.Option(envvar="VLCURATE_TOKEN", help="A platform agent token (`vlcurate agent register`).")
    ] = "",
    vlm_url: Annotated[str, typer.Option(help="The prober VLM (OpenAI-compatible, ending in /v1).")] = (
        "http://127.0.0.1:8300/v1"
    ),
    vlm_model: Annotated[str, typer.Option(help="The prober's model name.")] = "tiny-synth",
    sessions: Annotated[int, typer.Option(min=1, help="Sessions to play.")] = 1,
    questions: Annotated[int, typer.Option(min=1, max=10, help="Questions tried per image.")] = 3,
    judge: Annotated[bool, typer.Option(help="Judge other players' flags between sessions.")] = True,
) -> None:
    """Play GAP as an agent: a prober VLM proposes questions and checks the game model's answers."""
    from vlcurate.agents.gap_player import GapAgent, PlayStats
    from vlcurate.vlm.client import VLMSettings

    with user_errors():
        try:
            agent = GapAgent(
                server, token, VLMSettings(base_url=vlm_url, model=vlm_model), questions_per_image=questions
            )
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        stats = PlayStats()
        try:
            for _ in range(sessions):
                agent.play_session(game, stats)
                if judge:
                    agent.judge_all(stats)
        except RuntimeError as exc:
            raise fail(str(exc)) from None
        finally:
            agent.close()
    typer.echo(
        f"played {stats.sessions} sessions: {stats.questions} questions, {stats.flags} flags, "
        f"{stats.judgements} judgements, +{stats.points:g} points credited at session ends"
        + (f"; {stats.reasons[-1]}" if stats.reasons else "")
    )


game_app.command("play")(play)


def register(app: typer.Typer) -> None:
    app.add_typer(game_app, name="game")
