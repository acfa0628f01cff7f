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
