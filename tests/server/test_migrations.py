"""The Alembic migrations build exactly the tables the code declares, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from vlcurate.server import db
from vlcurate.server.migrate import downgrade, upgrade


def test_upgrade_matches_the_declared_schema_and_downgrade_removes_it(platform_db: str) -> None:
    engine = db.make_engine(platform_db)
    upgrade(engine)
    upgrade(engine)  # a second start is a no-op
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    assert diff == []
    tables = set(inspect(engine).get_table_names())
    assert set(db.metadata.tables) <= tables
    downgrade(engine, "base")
    assert set(inspect(engine).get_table_names()) - {"alembic_version"} == set()
    engine.dispose()
