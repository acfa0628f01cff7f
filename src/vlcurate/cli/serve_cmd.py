"""`vlcurate serve`: the DataAgent platform server (API, dashboard, lease sweeper) under uvicorn."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from vlcurate.cli.errors import user_errors


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve_command(
        db: Annotated[
            str, typer.Option(help="SQLite file or PostgreSQL URL (postgresql://user@host/db).")
        ] = "vlcurate.db",
        host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
        admin_token: Annotated[
            str | None,
            typer.Option(envvar="VLCURATE_ADMIN_TOKEN", help="Operator token (generated if unset)."),
        ] = None,
        open_registration: Annotated[bool, typer.Option(help="Let anyone create agent tokens.")] = False,
        workers: Annotated[int, typer.Option(min=1, help="Server processes (PostgreSQL only for > 1).")] = 1,
        rate_per_minute: Annotated[int, typer.Option(min=1, help="Default per-agent request rate.")] = 600,
        daily_quota: Annotated[
            int, typer.Option(min=1, help="Default leases per agent per UTC day.")
        ] = 20_000,
        max_leases_per_agent: Annotated[
            int, typer.Option(min=1, help="Leases one agent token may hold at once.")
        ] = 2,
        max_leases_per_contributor: Annotated[
            int, typer.Option(min=1, help="Leases one contributor may hold at once, all its agents.")
        ] = 4,
        max_walkaways_per_hour: Annotated[
            int, typer.Option(min=1, help="Leases a contributor may hand back or let expire per UTC hour.")
        ] = 30,
        image_rate_per_minute: Annotated[
            int, typer.Option(min=1, help="Lease images one agent may fetch per minute.")
        ] = 6000,
        link_origins: Annotated[
            bool, typer.Option(help="Count contributors seen from one address as one voice.")
        ] = True,
        link_loopback: Annotated[
            bool, typer.Option(help="Link by loopback addresses too (tests, the simulation).")
        ] = False,
        telegram_bot_token: Annotated[
            str | None,
            typer.Option(
                envvar="VLCURATE_TELEGRAM_BOT_TOKEN",
                help="GAP: the Telegram bot token that signs Mini App initData (enables Telegram login).",
            ),
        ] = None,
        log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
    ) -> None:
        """Run the platform: JSON API (docs at /docs), live dashboard at /, lease sweeper."""
        import uvicorn

        from vlcurate.server.db import make_engine, normalize_url
        from vlcurate.server.migrate import upgrade
        from vlcurate.server.settings import ServerSettings

        with user_errors():
            settings = ServerSettings(
                db=db,
                admin_token=admin_token,
                open_registration=open_registration,
                rate_per_minute=rate_per_minute,
                daily_quota=daily_quota,
                max_leases_per_agent=max_leases_per_agent,
                max_leases_per_contributor=max_leases_per_contributor,
                max_walkaways_per_hour=max_walkaways_per_hour,
                image_rate_per_minute=image_rate_per_minute,
                link_origins=link_origins,
                link_loopback=link_loopback,
                telegram_bot_token=telegram_bot_token,
            )
            if workers > 1 and not normalize_url(db).startswith("postgresql"):
                raise ValueError("--workers > 1 needs PostgreSQL (SQLite serialises writes anyway)")
            engine = make_engine(db)
            upgrade(engine)  # once, before workers start
            engine.dispose()
        # Migrated above, once: the workers skip it.
        os.environ["VLCURATE_SERVER_SETTINGS"] = settings.model_copy(
            update={"migrate": False}
        ).model_dump_json()
        where = normalize_url(db).split("@")[-1]
        typer.echo(f"vlcurate serve: http://{host}:{port}/ (API docs at /docs), database {where}")
        uvicorn.run(
            "vlcurate.server.asgi:app",
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            timeout_graceful_shutdown=5,
            timeout_keep_alive=30,  # agents come back every few seconds; keep their connection
        )
