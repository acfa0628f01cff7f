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


def test_version_counts_keep_their_totals_through_the_shard_migration_both_ways(platform_db: str) -> None:
    from sqlalchemy import text

    from vlcurate.server.queries import versions

    engine = db.make_engine(platform_db)
    upgrade(engine, "0002")
    with db.begin_write(engine) as conn:
        conn.execute(
            text(
                "INSERT INTO version_stats (version, gold_pass, gold_fail, agree, disagree) "
                "VALUES ('v1', 3, 1, 5, 0), ('v2', 0, 2, 0, 7)"
            )
        )
    upgrade(engine)
    with db.begin_write(engine) as conn:
        assert sorted(conn.execute(text("SELECT version, shard, agree FROM version_stats")).all()) == [
            ("v1", 0, 5),
            ("v2", 0, 0),
        ]
        conn.execute(
            db.version_stats.insert().values(
                version="v1", shard=9, gold_pass=1, gold_fail=0, agree=2, disagree=1
            )
        )
    with engine.connect() as conn:
        got = {v.version: (v.gold_pass, v.gold_fail, v.agree, v.disagree) for v in versions(conn)}
    assert got == {"v1": (4, 1, 7, 1), "v2": (0, 2, 0, 7)}
    downgrade(engine, "0002")
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT version, gold_pass, gold_fail, agree, disagree FROM version_stats")
        ).all()
    assert sorted(tuple(r) for r in rows) == [("v1", 4, 1, 7, 1), ("v2", 0, 2, 0, 7)]
    engine.dispose()
