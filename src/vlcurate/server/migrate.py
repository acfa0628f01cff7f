"""Run the Alembic migrations that create and evolve the platform's schema."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Engine

from vlcurate.server import db

HERE = Path(__file__).parent


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "migrations"))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    cfg.attributes["engine"] = engine
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (idempotent; safe when several workers start at once)."""
    with db.begin_write(engine) as conn:
        if conn.dialect.name == "postgresql":
            # One migrator at a time across server workers: a transaction-scoped advisory lock.
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(727274)")
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


def downgrade(engine: Engine, revision: str) -> None:
    with db.begin_write(engine) as conn:
        cfg = alembic_config(engine)
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, revision)


def revision_module(filename: str) -> ModuleType:
    """A migration file as a module (their names start with digits, so `import` cannot reach them):
    a revision that replaces SQL functions restores the earlier file's text on downgrade."""
    path = HERE / "migrations" / "versions" / filename
    spec = importlib.util.spec_from_file_location(f"_vlc_revision_{path.stem}", path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
