"""Alembic environment: runs on the connection the server hands over (see `server/migrate.py`)."""

from __future__ import annotations

from alembic import context

from vlcurate.server.db import metadata

config = context.config
connection = config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through vlcurate.server.migrate.upgrade (it passes a connection)")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
