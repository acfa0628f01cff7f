"""Server settings: one pydantic model, filled from the `vlcurate serve` options or the environment."""

from __future__ import annotations

from pydantic import BaseModel, Field


class ServerSettings(BaseModel):
    db: str = Field(default="vlcurate.db", description="SQLite path or SQLAlchemy/PostgreSQL URL.")
    admin_token: str | None = Field(
        default=None, description="Operator token; generated and printed if unset."
    )
    open_registration: bool = Field(default=False, description="Let anyone create an agent token.")
    rate_per_minute: int = Field(default=600, ge=1, description="Default per-agent request rate limit.")
    daily_quota: int = Field(default=20_000, ge=1, description="Default leases per agent per UTC day.")
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    max_leases_per_agent: int = Field(
        default=2, ge=1, le=10_000, description="Leases one agent token may hold at once (no hoarding)."
    )
    max_leases_per_contributor: int = Field(
        default=4, ge=1, le=100_000, description="Leases one contributor may hold at once, all agents."
    )
    max_walkaways_per_hour: int = Field(
        default=30,
        ge=1,
        le=1_000_000,
        description="Leases a contributor may hand back or let expire per UTC hour before leasing is "
        "refused until the next hour (walking away from a unit must not be a way to pick units).",
    )
    image_rate_per_minute: int = Field(
        default=6000, ge=1, description="Lease images one agent may fetch per minute."
    )
    link_origins: bool = Field(
        default=True,
        description="Link contributors seen from the same client address: in a unit's quorum they "
        "count as one voice, and only one of them is credited.",
    )
    link_loopback: bool = Field(
        default=False,
        description="Also link by loopback addresses (127.0.0.0/8, ::1). Off by default: agents on the "
        "server's own machine are a local setup; tests and the simulation turn it on.",
    )
    telegram_bot_token: str | None = Field(
        default=None,
        description="GAP: the bot token that signs Telegram Mini App initData (login off if unset).",
    )
    telegram_max_age_s: int = Field(
        default=86_400, ge=60, description="GAP: oldest Telegram initData (auth_date) accepted, in seconds."
    )
    sweep_seconds: float = Field(default=1.0, gt=0, description="How often expired leases are requeued.")
    migrate: bool = Field(default=True, description="Run Alembic migrations at start-up.")
    pool_size: int = Field(default=10, ge=1)
    telemetry: bool = Field(
        default=False, description="FastAPI's native OpenTelemetry (tracing, metrics, logs)."
    )
    handler_threads: int = Field(default=8, ge=1, le=200, description="Threads running request handlers.")
    switch_interval: float | None = Field(
        default=None,
        gt=0,
        le=0.1,
        description="Python's GIL switch interval in the server (seconds); default 0.5 ms on SQLite, "
        "Python's 5 ms on PostgreSQL.",
    )
